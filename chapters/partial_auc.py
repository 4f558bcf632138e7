"""The ISIC 2024 challenge's metric: the area under the ROC curve above 80 % sensitivity (pAUC).

A screening tool must catch most cancers, so only the part of the ROC curve (train.py, roc_curve)
where the true positive rate is at least 80 % is of use to it. The challenge scores that part: the
area between the curve and the line TPR = 0.8, from 0 (never above it) to 0.2 (a perfect ranking).
Two models of the same AUC can differ here: one that ranks the obvious cancers well and the subtle
ones last loses at the top of the curve, where a screening tool lives. evaluate.py reports it
beside the AUC; benchmarks/metrics_vs_sklearn.py checks it against scikit-learn's standardised
partial AUC.
"""


def partial_auc(fpr, tpr, min_tpr=0.8):
    """Area between the ROC curve (its points: false and true positive rates) and the line
    TPR = min_tpr, where the curve is above it (0 to 1 - min_tpr); NaN for no curve (one class)."""
    if not fpr:
        return float("nan")
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]):
        h0, h1 = y0 - min_tpr, y1 - min_tpr  # heights above the line at both ends of a segment
        if h0 >= 0:
            area += (x1 - x0) * (h0 + h1) / 2
        elif h1 > 0:  # the segment crosses the line: only the triangle above it counts
            area += (x1 - x0) * h1 / (h1 - h0) * h1 / 2
    return area

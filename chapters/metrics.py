"""Every metric of the project, by hand: what train.py validates with and evaluate.py reports.

labels are 0/1 (1 = malignant) and probabilities the model's P(malignant); an image is called
malignant when its probability is at least the threshold. A ratio with nothing to divide by is
NaN (undefined).

Two kinds of metric:
- those that rank, over every threshold at once: the ROC curve, its area (AUC) and the part of it
  above 80 % sensitivity (pAUC, the ISIC 2024 challenge's metric). They need no threshold, which is
  why train.py judges each epoch by the AUC;
- those at one threshold: the confusion matrix and what it gives (sensitivity, specificity,
  precision, balanced accuracy, F1), and how to choose that threshold on validation images.
benchmarks/metrics_vs_sklearn.py checks the ranking ones against scikit-learn's on random scores.
"""
import math


# --- Ranking: the ROC curve and the areas under it ------------------------------------------------

def roc_curve(labels, probabilities):
    """The ROC curve as (fpr, tpr, thresholds), from (0, 0) to (1, 1).

    Lower the threshold past each distinct score in turn and count who is now called malignant.
    Images with equal scores cross together, so a tie moves the curve diagonally: that is how ties
    count half.
    """
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return [], [], []  # with one class there is no curve
    ranked = sorted(zip(probabilities, labels), reverse=True)
    fpr, tpr, thresholds = [0.0], [0.0], [math.inf]
    true_pos = false_pos = 0
    for i, (score, label) in enumerate(ranked):
        true_pos += label
        false_pos += 1 - label
        if i + 1 == len(ranked) or ranked[i + 1][0] != score:  # the last of a run of equal scores
            fpr.append(false_pos / negatives)
            tpr.append(true_pos / positives)
            thresholds.append(score)
    return fpr, tpr, thresholds


def roc_auc(labels, probabilities):
    """Area under the ROC curve, by the trapezoid rule: the chance that a random malignant image
    scores above a random benign one (0.5 is guessing, 1 is perfect). NaN when only one class
    is present."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    if not fpr:
        return math.nan
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))


def partial_auc(labels, probabilities, min_tpr=0.8):
    """Area between the ROC curve and the line TPR = min_tpr, where the curve is above it (0 to
    1 - min_tpr): the only region a screening tool, which must catch most cancers, can use."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    if not fpr:
        return math.nan
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]):
        h0, h1 = y0 - min_tpr, y1 - min_tpr  # heights above the line at both ends of a segment
        if h0 >= 0:
            area += (x1 - x0) * (h0 + h1) / 2
        elif h1 > 0:  # the segment crosses the line: only the triangle above it counts
            area += (x1 - x0) * h1 / (h1 - h0) * h1 / 2
    return area


def summarise(probabilities, labels):
    """Validation predictions with their loss (cross-entropy), AUC, accuracy (at 0.5) and `score`,
    the figure that chooses the epoch: the AUC, or -loss where the AUC is undefined (one
    class only)."""
    loss = -sum(math.log(max(p if y else 1 - p, 1e-12))
                for p, y in zip(probabilities, labels)) / len(labels)
    auc = roc_auc(labels, probabilities)
    accuracy = sum((p >= 0.5) == y for p, y in zip(probabilities, labels)) / len(labels)
    return {"probabilities": probabilities, "labels": labels, "loss": loss, "auc": auc,
            "accuracy": accuracy, "score": -loss if math.isnan(auc) else auc}


# --- At one threshold: the confusion matrix, and what it gives ------------------------------------

def ratio(numerator, denominator):
    return numerator / denominator if denominator else math.nan


def confusion_matrix(labels, predictions):
    """[[TN, FP], [FN, TP]]: rows are the truth (benign, malignant), columns the prediction."""
    matrix = [[0, 0], [0, 0]]
    for truth, predicted in zip(labels, predictions):
        matrix[truth][predicted] += 1
    return matrix


def threshold_metrics(labels, probabilities, threshold):
    """The metrics that depend on where the threshold is put."""
    matrix = confusion_matrix(labels, [int(p >= threshold) for p in probabilities])
    (tn, fp), (fn, tp) = matrix
    recall, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "balanced_accuracy": (recall + specificity) / 2,
            "precision": ratio(tp, tp + fp), "recall": recall, "specificity": specificity,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "confusion_matrix": matrix}


def choose_threshold(labels, probabilities, target_sensitivity=None):
    """The threshold with the best balanced accuracy (0.5 when one class is missing); with
    target_sensitivity, the highest threshold that catches at least that share of
    malignant images."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    if not fpr:
        return 0.5
    if target_sensitivity is not None:
        # The curve climbs as the threshold falls: take the first point high enough.
        return next(t for t, sensitivity in zip(thresholds, tpr)
                    if sensitivity >= target_sensitivity)
    best = max(range(1, len(fpr)), key=lambda i: tpr[i] - fpr[i])  # = 2 * balanced accuracy - 1
    return thresholds[best]


def all_metrics(labels, probabilities, threshold):
    return {**threshold_metrics(labels, probabilities, threshold),
            "auc": roc_auc(labels, probabilities), "pauc_80": partial_auc(labels, probabilities),
            "n": len(labels), "threshold": threshold}

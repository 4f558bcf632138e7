"""Check the hand-written ROC AUC (train.py) and pAUC (chapters/partial_auc.py) against scikit-learn and the
ISIC 2024 formula.

scikit-learn is not a dependency of the project; install it just for this check:
  python -m pip install scikit-learn && python benchmarks/metrics_vs_sklearn.py
Prints the largest difference over random cases with many ties (scores rounded to 1 or 2 decimals).
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chapters.partial_auc import partial_auc  # noqa: E402
from train import roc_auc, roc_curve  # noqa: E402

try:
    import numpy as np
    from sklearn.metrics import roc_auc_score
except ImportError:
    sys.exit("this check needs scikit-learn: python -m pip install scikit-learn")


def isic_2024_pauc(labels, scores, min_tpr=0.80):
    """The challenge's scoring: swap the classes, take sklearn's McClish-standardised partial AUC, undo it."""
    max_fpr = 1 - min_tpr
    standardised = roc_auc_score(1 - np.asarray(labels), -np.asarray(scores), max_fpr=max_fpr)
    return 0.5 * max_fpr ** 2 + (max_fpr - 0.5 * max_fpr ** 2) / 0.5 * (standardised - 0.5)


rng = random.Random(1)
worst_auc = worst_pauc = 0.0
cases = 0
while cases < 300:
    labels = [int(rng.random() < 0.3) for _ in range(rng.randint(5, 300))]
    if len(set(labels)) < 2:
        continue
    scores = [round(rng.random() * 0.5 + 0.4 * label, rng.choice([1, 2, 6])) for label in labels]
    worst_auc = max(worst_auc, abs(roc_auc(labels, scores) - roc_auc_score(labels, scores)))
    worst_pauc = max(worst_pauc, abs(partial_auc(*roc_curve(labels, scores)[:2]) - isic_2024_pauc(labels, scores)))
    cases += 1
print(f"{cases} random cases: largest difference in ROC AUC {worst_auc:.1e}, in pAUC above 80% TPR {worst_pauc:.1e}")

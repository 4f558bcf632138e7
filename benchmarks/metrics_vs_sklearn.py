"""Check the hand-written metrics against scikit-learn: train.py's ROC AUC, chapters/partial_auc.py's pAUC (and the
ISIC 2024 formula), chapters/calibration.py's Brier score and reliability bins.

scikit-learn is not a dependency of the project; install it just for this check:
  python -m pip install scikit-learn && python benchmarks/metrics_vs_sklearn.py
Prints the largest difference over random cases: for the ranking metrics with many ties (scores rounded to 1
or 2 decimals); for calibration, probabilities of 6 decimals or rounded to 1 or 2, many of them on a bin's
edge (an edge counts in the bin below, as sklearn's calibration_curve counts it, strategy="uniform").
"""
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from chapters.calibration import BINS, brier_score, reliability_bins  # noqa: E402
from chapters.partial_auc import partial_auc  # noqa: E402
from train import roc_auc, roc_curve  # noqa: E402

try:
    import numpy as np
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss, roc_auc_score
except ImportError:
    sys.exit("this check needs scikit-learn: python -m pip install scikit-learn")


def isic_2024_pauc(labels, scores, min_tpr=0.80):
    """The challenge's scoring: swap the classes, take sklearn's McClish-standardised partial AUC, undo it."""
    max_fpr = 1 - min_tpr
    standardised = roc_auc_score(1 - np.asarray(labels), -np.asarray(scores), max_fpr=max_fpr)
    return 0.5 * max_fpr ** 2 + (max_fpr - 0.5 * max_fpr ** 2) / 0.5 * (standardised - 0.5)


def bins_difference(labels, probabilities):
    """The largest difference between our non-empty bins (observed share, mean probability) and sklearn's."""
    observed, predicted = calibration_curve(labels, probabilities, n_bins=BINS, strategy="uniform")
    ours = [b for b in reliability_bins(labels, probabilities) if b["images"]]
    if len(ours) != len(observed):
        return float("inf")
    return max(max(abs(b["observed_share"] - o), abs(b["mean_probability"] - p))
               for b, o, p in zip(ours, observed, predicted))


rng = random.Random(1)
worst_auc = worst_pauc = worst_brier = worst_bins = 0.0
cases = 0
while cases < 300:
    labels = [int(rng.random() < 0.3) for _ in range(rng.randint(5, 300))]
    if len(set(labels)) < 2:
        continue
    scores = [round(rng.random() * 0.5 + 0.4 * label, rng.choice([1, 2, 6])) for label in labels]
    worst_auc = max(worst_auc, abs(roc_auc(labels, scores) - roc_auc_score(labels, scores)))
    worst_pauc = max(worst_pauc, abs(partial_auc(*roc_curve(labels, scores)[:2]) - isic_2024_pauc(labels, scores)))
    probabilities = [round(rng.random() ** rng.choice([1, 3]), rng.choice([1, 2, 6])) for _ in labels]
    worst_brier = max(worst_brier, abs(brier_score(labels, probabilities) - brier_score_loss(labels, probabilities)))
    worst_bins = max(worst_bins, bins_difference(labels, probabilities))
    cases += 1
print(f"{cases} random cases: largest difference in ROC AUC {worst_auc:.1e}, in pAUC above 80% TPR {worst_pauc:.1e}, "
      f"in the Brier score {worst_brier:.1e}, in the {BINS} reliability bins {worst_bins:.1e}")

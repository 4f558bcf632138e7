"""Every metric against examples worked out by hand (the working is in the comments)."""
import math

import pytest

from evaluate import (all_metrics, choose_threshold, confusion_matrix, partial_auc, roc_auc, roc_curve,
                      threshold_metrics)

# Example A: benign scores 0.1, 0.4; malignant scores 0.35, 0.8.
LABELS_A = [0, 0, 1, 1]
SCORES_A = [0.1, 0.4, 0.35, 0.8]


def test_confusion_matrix_counts_rows_as_truth_and_columns_as_prediction():
    assert confusion_matrix([0, 0, 1, 1, 1], [0, 1, 1, 1, 0]) == [[1, 1], [1, 2]]


def test_threshold_metrics_by_hand():
    # At 0.5 only 0.8 is called malignant: TN = 2, FP = 0, FN = 1, TP = 1.
    metrics = threshold_metrics(LABELS_A, SCORES_A, 0.5)
    assert metrics["confusion_matrix"] == [[2, 0], [1, 1]]
    assert metrics["accuracy"] == 0.75
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == 0.5
    assert metrics["specificity"] == 1.0
    assert metrics["f1"] == pytest.approx(2 / 3)  # 2TP / (2TP + FP + FN) = 2 / 3
    assert metrics["balanced_accuracy"] == 0.75


def test_threshold_is_inclusive():
    # A score equal to the threshold is called malignant.
    assert threshold_metrics([1], [0.35], 0.35)["confusion_matrix"] == [[0, 0], [0, 1]]


def test_roc_curve_and_auc_by_hand():
    # Lowering the threshold past 0.8 (malignant), 0.4 (benign), 0.35 (malignant), 0.1 (benign).
    fpr, tpr, thresholds = roc_curve(LABELS_A, SCORES_A)
    assert list(zip(fpr, tpr)) == [(0, 0), (0, 0.5), (0.5, 0.5), (0.5, 1), (1, 1)]
    assert thresholds[1:] == [0.8, 0.4, 0.35, 0.1]
    # 3 of the 4 (malignant, benign) pairs are ranked right: 0.35 > 0.1, 0.8 > 0.1, 0.8 > 0.4.
    assert roc_auc(LABELS_A, SCORES_A) == pytest.approx(0.75)


def test_auc_counts_a_tie_as_half():
    # Malignant 0.5, 0.9; benign 0.5, 0.2. Pairs: (0.5 vs 0.5) tie = 1/2, the other three right: 3.5 / 4.
    labels, scores = [0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]
    fpr, tpr, _ = roc_curve(labels, scores)
    assert list(zip(fpr, tpr)) == [(0, 0), (0, 0.5), (0.5, 1), (1, 1)]  # the tie is one diagonal step
    assert roc_auc(labels, scores) == pytest.approx(0.875)
    assert roc_auc(labels, [0.5] * 4) == pytest.approx(0.5)  # all tied: chance


def test_auc_extremes():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == 0.0


def test_partial_auc_by_hand():
    # Example A: the curve is above TPR 0.8 only from (0.5, 1) to (1, 1): 0.5 wide, 0.2 high.
    assert partial_auc(LABELS_A, SCORES_A) == pytest.approx(0.1)
    # The tie example: the diagonal from (0, 0.5) to (0.5, 1) crosses 0.8 at FPR 0.3, leaving a triangle
    # 0.2 wide and 0.2 high above the line (0.02), then the flat part from 0.5 to 1 (0.5 x 0.2 = 0.1).
    assert partial_auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.12)
    # Perfect: the whole 1 x 0.2 strip. Reversed: nothing. Chance (the diagonal): a 0.2 x 0.2 triangle.
    assert partial_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.2)
    assert partial_auc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(0.0)
    assert partial_auc([0, 1] * 3, [0.5] * 6) == pytest.approx(0.02)


def test_one_class_only_gives_nan_not_a_crash():
    labels, scores = [0, 0, 0], [0.2, 0.7, 0.4]
    metrics = all_metrics(labels, scores, 0.5)
    assert math.isnan(metrics["auc"]) and math.isnan(metrics["pauc_80"])
    assert math.isnan(metrics["recall"]) and math.isnan(metrics["balanced_accuracy"])
    assert metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["precision"] == 0.0  # one image called malignant, wrongly
    assert metrics["n"] == 3
    assert choose_threshold(labels, scores) == 0.5


def test_choose_threshold_maximises_balanced_accuracy():
    # 4 malignant, 3 benign. Calling >= 0.6 catches 3 of 4 malignant and no benign: TPR - FPR = 0.75,
    # better than >= 0.3 (all malignant, 1 of 3 benign: 1 - 1/3) or any other cut.
    labels = [0, 0, 1, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]
    assert choose_threshold(labels, scores) == 0.6
    assert threshold_metrics(labels, scores, 0.6)["balanced_accuracy"] == pytest.approx(0.875)


def test_choose_threshold_for_a_target_sensitivity():
    # Same 7 images. Sensitivity as the threshold falls: >= 0.8 -> 1/4, 0.7 -> 2/4, 0.6 -> 3/4, 0.3 -> 4/4.
    labels = [0, 0, 1, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]
    assert choose_threshold(labels, scores, target_sensitivity=0.5) == 0.7   # the highest that reaches 2/4
    assert choose_threshold(labels, scores, target_sensitivity=0.75) == 0.6
    assert choose_threshold(labels, scores, target_sensitivity=0.9) == 0.3   # all 4, at the price of 0.4's FP
    assert threshold_metrics(labels, scores, 0.3)["specificity"] == pytest.approx(2 / 3)


def test_report_on_one_class_writes_null_and_still_draws(tmp_path):
    from evaluate import draw_confusion_matrix, draw_roc, without_nan

    metrics = all_metrics([0, 0, 0], [0.2, 0.7, 0.4], 0.5)
    assert without_nan(metrics)["auc"] is None and without_nan(metrics)["specificity"] == pytest.approx(2 / 3)
    draw_roc([0, 0, 0], [0.2, 0.7, 0.4], metrics, tmp_path / "roc.png")
    draw_confusion_matrix(metrics["confusion_matrix"], 0.5, tmp_path / "cm.png")
    assert (tmp_path / "roc.png").stat().st_size > 0 and (tmp_path / "cm.png").stat().st_size > 0

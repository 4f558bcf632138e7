"""Every metric against examples worked out by hand (the working is in the comments)."""
import json
import math

import pandas as pd
import pytest
from PIL import Image

from chapters.partial_auc import partial_auc
from evaluate import (all_metrics, choose_threshold, confusion_matrix, threshold_metrics, without_nan,
                      write_report)
from train import roc_auc, roc_curve

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


def pauc(labels, scores):
    return partial_auc(*roc_curve(labels, scores)[:2])


def test_partial_auc_by_hand():
    # Example A: the curve is above TPR 0.8 only from (0.5, 1) to (1, 1): 0.5 wide, 0.2 high.
    assert pauc(LABELS_A, SCORES_A) == pytest.approx(0.1)
    # The tie example: the diagonal from (0, 0.5) to (0.5, 1) crosses 0.8 at FPR 0.3, leaving a triangle
    # 0.2 wide and 0.2 high above the line (0.02), then the flat part from 0.5 to 1 (0.5 x 0.2 = 0.1).
    assert pauc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == pytest.approx(0.12)
    # Perfect: the whole 1 x 0.2 strip. Reversed: nothing. Chance (the diagonal): a 0.2 x 0.2 triangle.
    assert pauc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.2)
    assert pauc([0, 0, 1, 1], [0.4, 0.3, 0.2, 0.1]) == pytest.approx(0.0)
    assert pauc([0, 1] * 3, [0.5] * 6) == pytest.approx(0.02)


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
    # Three benign images scored 0.2, 0.7, 0.4 at threshold 0.5: 0.7 is a false positive.
    # TN = 2, FP = 1, FN = 0, TP = 0. Defined: accuracy = specificity = 2/3, precision = 0 / 1 = 0,
    # F1 = 2TP / (2TP + FP + FN) = 0 / 1 = 0. Undefined (no malignant image): recall, balanced accuracy,
    # AUC and pAUC, which JSON cannot hold as NaN and must write as null.
    labels, scores = [0, 0, 0], [0.2, 0.7, 0.4]
    metrics = all_metrics(labels, scores, 0.5)
    table = pd.DataFrame({"isic_id": ["a", "b", "c"]})
    write_report(tmp_path, without_nan(metrics), metrics, table, scores, labels, scores)  # as evaluate.py's main does

    written = json.loads((tmp_path / "metrics.json").read_text())  # json.loads would refuse a bare NaN
    for key in ("recall", "balanced_accuracy", "auc", "pauc_80"):
        assert written[key] is None, key
    assert written["confusion_matrix"] == [[2, 1], [0, 0]]
    assert written["accuracy"] == pytest.approx(2 / 3) and written["specificity"] == pytest.approx(2 / 3)
    assert written["precision"] == 0 and written["f1"] == 0
    assert written["n"] == 3 and written["threshold"] == 0.5
    predictions = pd.read_csv(tmp_path / "predictions.csv")
    assert predictions["predicted"].tolist() == [0, 1, 0] and predictions["label"].tolist() == [0, 0, 0]

    white = (255, 255, 255)
    for name, size in (("confusion_matrix.png", (450, 390)), ("roc.png", (505, 500))):
        # A real PNG (by its signature, not its name) of the size the drawing code lays out:
        # matrix: 130 px of row labels + 2 cells of 150 + 20; 70 px of header + 2 cells + 20.
        # ROC chart: 75 px left margin + 400 + 30; 40 px title + 400 + 60 for the axis label.
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
        image = Image.open(tmp_path / name).convert("RGB")
        assert image.size == size, name
        colours = dict((colour, count) for count, colour in image.getcolors(maxcolors=size[0] * size[1]))
        assert size[0] * size[1] - colours.get(white, 0) > 1000, f"{name} is (nearly) blank"

    # The matrix is shaded by each row's share: TN (2 of 3) darker than FP (1 of 3); the malignant row,
    # with no images, stays white. Sampled just inside each cell's top-left corner, away from the text.
    matrix = Image.open(tmp_path / "confusion_matrix.png").convert("RGB")
    tn, fp = matrix.getpixel((130 + 5, 70 + 5)), matrix.getpixel((280 + 5, 70 + 5))
    fn, tp = matrix.getpixel((130 + 5, 220 + 5)), matrix.getpixel((280 + 5, 220 + 5))
    assert tn[0] < fp[0] < 255 and tn[2] == fp[2] == 255  # shades of blue, darker for the larger share
    assert fn == tp == white
    # With one class there is no ROC curve to draw, so none of the curve's blue may appear.
    roc = Image.open(tmp_path / "roc.png").convert("RGB")
    assert (30, 60, 200) not in [colour for _, colour in roc.getcolors(maxcolors=505 * 500)]

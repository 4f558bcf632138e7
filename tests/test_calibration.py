"""chapters/calibration.py: the Brier score, the reliability bins, the ECE, Van Calster's intercept and slope,
the prevalence each way of training assumes, and --prevalence, on hand-worked examples."""
import json
import math

import pandas as pd
import pytest
import torch

import evaluate
from chapters import calibration
from conftest import run_main

# Eight images: four at 0.5 (one malignant), four at 0.8 (three malignant).
LABELS = [0, 0, 0, 1, 1, 1, 1, 0]
PROBABILITIES = [0.5] * 4 + [0.8] * 4


def test_brier_bins_and_ece_by_hand():
    # Brier: 4 x 0.25 + 3 x 0.2^2 + 0.8^2 = 1.76, over 8.
    assert calibration.brier_score(LABELS, PROBABILITIES) == pytest.approx(0.22)
    bins = calibration.reliability_bins(LABELS, PROBABILITIES)
    assert [b["images"] for b in bins] == [0, 0, 0, 0, 4, 0, 0, 4, 0, 0]  # 0.5 in (0.4, 0.5], 0.8 in (0.7, 0.8]
    assert (bins[4]["mean_probability"], bins[4]["observed_share"]) == (0.5, 0.25)
    assert (bins[7]["mean_probability"], bins[7]["observed_share"]) == pytest.approx((0.8, 0.75))
    # ECE: half the images 0.25 off, half 0.05 off.
    assert calibration.expected_calibration_error(bins) == pytest.approx(0.15)
    # The ends: 0 and 0.1 in the first bin, 1 in the last.
    edges = calibration.reliability_bins([0, 0, 1, 1], [0.0, 0.1, 0.10001, 1.0])
    assert [b["images"] for b in edges] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]


def test_calibration_intercept_and_slope_by_hand():
    # Two groups, two parameters: the slope's fit meets each group's share exactly, logit(0.25) = -ln 3 at
    # logit 0 and logit(0.75) = ln 3 at logit(0.8) = ln 4: slope 2 ln 3 / ln 4. The intercept, logit(p) an
    # offset: sigmoid(a) + sigmoid(a + ln 4) = 1 (four malignant of eight), so a = -ln 2.
    intercept, slope = calibration.calibration_intercept_and_slope(LABELS, PROBABILITIES)
    assert slope == pytest.approx(math.log(3) / math.log(2), abs=1e-5)
    assert intercept == pytest.approx(-math.log(2), abs=1e-5)
    assert all(map(math.isnan, calibration.calibration_intercept_and_slope([1, 1], [0.2, 0.9])))


def checkpoint_with(labels=(0, 1, 1, 1), fusion=None, folds=1, **args):
    return {"val_predictions": {"label": list(labels)}, "fusion": fusion, "folds": folds, "args": args}


def test_the_prevalence_each_way_of_training_assumes():
    # 10 training images, 2 malignant; the val split 3 of 4 malignant; with --folds, train and val pooled.
    table = pd.DataFrame({"split": ["train"] * 10 + ["val"] * 4 + ["test"] * 5,
                          "label": [1, 1] + [0] * 8 + [0, 1, 1, 1] + [1] * 5})
    cases = {"fusion": (checkpoint_with(fusion={"bias": 0.0}), 0.75),
             "balanced sampler": (checkpoint_with(balanced_sampler=True), 0.5),
             "class weights": (checkpoint_with(class_weights=True), 0.5),
             "negatives per positive": (checkpoint_with(neg_per_pos=3), 2 / (2 + 6)),
             "plain": (checkpoint_with(), 0.2)}
    for case, (checkpoint, expected) in cases.items():
        assumed, found, _ = calibration.prevalence_assumed(checkpoint, table)
        assert (found, assumed) == (case, pytest.approx(expected)), case
    # Fewer benign images than K per malignant one: all of them.
    assert calibration.prevalence_assumed(checkpoint_with(neg_per_pos=10), table)[0] == pytest.approx(0.2)
    assert calibration.prevalence_assumed(checkpoint_with(folds=5), table)[0] == pytest.approx(5 / 14)
    # Without the training data: the validation images stand in.
    assert calibration.prevalence_assumed(checkpoint_with())[0] == pytest.approx(0.75)


def test_a_prevalence_moves_probabilities_and_threshold_alike():
    # From 1 in 2 to 1 in 5: the odds are divided by 4. 0.5 -> 0.2; 0.8 (odds 4) -> 0.5; 0.6 -> 0.6/(0.6+1.6).
    prevalence = {"assumed": 0.5, "target": 0.2}
    moved = calibration.to_prevalence([0.5, 0.8, 0.6, 0.0, 1.0], prevalence)
    assert moved == pytest.approx([0.2, 0.5, 0.6 / 2.2, 0.0, 1.0])
    assert calibration.to_prevalence([0.3], {"assumed": 0.5, "target": None}) == [0.3]
    # Threshold 0.6 moves to 0.2727: every image keeps its call, so sensitivity and specificity hold.
    (threshold,) = calibration.to_prevalence([0.6], prevalence)
    before = [p >= 0.6 for p in PROBABILITIES + [0.59, 0.61]]
    after = [p >= threshold for p in calibration.to_prevalence(PROBABILITIES + [0.59, 0.61], prevalence)]
    assert before == after
    # PPV and NPV of sensitivity 0.75 and specificity 0.75 at 20 %: 0.15 / (0.15 + 0.2), 0.6 / (0.6 + 0.05).
    ppv, npv = calibration.predictive_values(0.75, 0.75, 0.2)
    assert (ppv, npv) == pytest.approx((0.15 / 0.35, 0.6 / 0.65))


def test_the_report_states_calibration_and_prevalence(trained_baseline, tmp_path, monkeypatch, capsys):
    checkpoint, data = trained_baseline
    recorded = torch.load(checkpoint, weights_only=True)["prevalence"]
    assert recorded["case"] == "fusion"  # the synthetic set has metadata
    assert run_main(evaluate, checkpoint, "--out", tmp_path / "own", monkeypatch=monkeypatch) == 0
    assert run_main(evaluate, checkpoint, "--prevalence", 0.02, "--out", tmp_path / "screening",
                    monkeypatch=monkeypatch) == 0
    own, screening = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("own", "screening"))
    for key in ("brier", "ece", "calibration_intercept", "calibration_slope", "npv"):
        assert isinstance(own[key], float), key
    assert own["prevalence"]["assumed"] == pytest.approx(recorded["assumed"])
    assert own["prevalence"]["target"] is None and screening["prevalence"]["target"] == 0.02
    assert sum(b["images"] for b in own["reliability_bins"]) == own["n"]
    assert (tmp_path / "own" / "reliability.png").exists()
    # The same calls, so the same sensitivity and specificity; the probabilities moved by Bayes' rule.
    assert (screening["recall"], screening["specificity"]) == (own["recall"], own["specificity"])
    assert screening["confusion_matrix"] == own["confusion_matrix"]
    before, after = (pd.read_csv(tmp_path / name / "predictions.csv") for name in ("own", "screening"))
    expected = calibration.to_prevalence(before["probability_malignant"], screening["prevalence"])
    assert after["probability_malignant"].tolist() == pytest.approx(expected)
    assert screening["mean_probability"] < own["mean_probability"]
    assert "probabilities for a population 2.0% malignant (--prevalence)" in capsys.readouterr().out


def test_an_old_checkpoint_gives_the_same_report_and_the_pair_with_refit_is_refused(trained_baseline, tmp_path,
                                                                                     monkeypatch, capsys):
    checkpoint, data = trained_baseline
    old = torch.load(checkpoint, weights_only=True)
    new_prevalence = old.pop("prevalence")
    old.pop("novelty")
    torch.save(old, tmp_path / "old.pt")
    assert run_main(evaluate, tmp_path / "old.pt", "--out", tmp_path / "old", monkeypatch=monkeypatch) == 0
    assert "no 'unlike training' flag" in capsys.readouterr().out
    assert run_main(evaluate, checkpoint, "--out", tmp_path / "new", monkeypatch=monkeypatch) == 0
    old_metrics, new_metrics = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("old", "new"))
    assert old_metrics["prevalence"]["assumed"] == new_prevalence["assumed"]  # derived as train.py records it
    for key in ("auc", "threshold", "confusion_matrix", "brier", "ece"):
        assert old_metrics[key] == new_metrics[key], key
    assert "unlike_training" in new_metrics and "unlike_training" not in old_metrics
    assert run_main(evaluate, checkpoint, "--threshold-from", data, "--refit-fusion", "--prevalence", 0.1,
                    monkeypatch=monkeypatch) == 2
    assert "--prevalence with --refit-fusion" in capsys.readouterr().err

"""evaluate.py beyond the metrics: test-time augmentation, operating points, ensembles and --image."""
import json
import math
import re

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import evaluate
import train
from conftest import run_main
from model import dihedral_views, predict


def test_dihedral_views_are_the_eight_rotations_and_mirrors():
    image = torch.arange(9.0).view(1, 1, 3, 3)  # no symmetry: each view is a different grid
    views = list(dihedral_views(image))
    assert len(views) == 8 and len({tuple(view.flatten().tolist()) for view in views}) == 8
    assert torch.equal(views[0], image) and torch.equal(views[4], image.flip(-1))
    assert torch.equal(views[1][0, 0], torch.tensor([[2.0, 5, 8], [1, 4, 7], [0, 3, 6]]))  # a quarter turn


def test_tta_is_the_mean_probability_over_the_views():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    images = torch.rand(5, 3, 8, 8)
    model(images)  # give the lazy layer its shape
    loader = DataLoader(TensorDataset(images, torch.tensor([0, 1, 0, 1, 1])), batch_size=2)
    plain, labels = predict(model, loader, "cpu")
    averaged, _ = predict(model, loader, "cpu", tta=True)
    with torch.no_grad():
        expected = torch.stack([model(view).softmax(dim=1)[:, 1] for view in dihedral_views(images)]).mean(0)
    assert labels == [0, 1, 0, 1, 1]
    assert averaged == pytest.approx(expected.tolist(), abs=1e-6)
    assert plain == pytest.approx(model(images).softmax(dim=1)[:, 1].tolist(), abs=1e-6)
    assert plain != pytest.approx(averaged, abs=1e-4)  # this model is not rotation-invariant


# --- The threshold, from the validation predictions a checkpoint carries ------------------------------
# Seven validation images, worked by hand. Ranked from the highest score down:
#   0.8 M, 0.7 M, 0.6 M, 0.4 B, 0.3 M, 0.2 B, 0.1 B        (M malignant: 4 of them; B benign: 3)
# Calling ">= t" malignant, TPR - FPR (= 2 x balanced accuracy - 1) at each cut:
#   t = 0.8: 1/4 - 0      t = 0.7: 2/4 - 0     t = 0.6: 3/4 - 0 = 0.75 (best)
#   t = 0.4: 3/4 - 1/3    t = 0.3: 1 - 1/3 = 0.67                t = 0.2: 1 - 2/3     t = 0.1: 1 - 1
# Sensitivity at each cut: 0.8 -> 1/4, 0.7 -> 2/4, 0.6 -> 3/4, 0.4 -> 3/4, 0.3 -> 4/4. So the highest
# threshold that catches at least 90 % of them is 0.3, at least 75 % is 0.6, and at least 50 % is 0.7.
HAND_MADE = {"isic_id": [f"v{i}" for i in range(7)], "label": [0, 0, 1, 0, 1, 1, 1],
             "image_probability": [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8]}
# A second member's predictions on the same images. Alone, its best cut is 0.5 (3/4 - 0). Averaged with
# the first, image by image: 0.2, 0.1, 0.4, 0.3, 0.6, 0.8, 0.5, which ranks every malignant image above
# every benign one: the best cut of the mean is 0.4 (TPR 1, FPR 0), found neither in the first member's
# scores nor by averaging the two members' thresholds ((0.6 + 0.5) / 2 = 0.55).
SECOND = {**HAND_MADE, "image_probability": [0.3, 0.0, 0.5, 0.2, 0.6, 0.9, 0.2]}


def test_pick_threshold_by_hand():
    one = {"val_predictions": HAND_MADE}
    assert evaluate.pick_threshold([one], ["one.pt"]) == 0.6
    assert evaluate.pick_threshold([one], ["one.pt"], target_sensitivity=0.9) == 0.3
    assert evaluate.pick_threshold([one], ["one.pt"], target_sensitivity=0.75) == 0.6
    assert evaluate.pick_threshold([one], ["one.pt"], target_sensitivity=0.5) == 0.7
    two = {"val_predictions": SECOND}
    assert evaluate.pick_threshold([two], ["two.pt"]) == 0.5
    assert evaluate.pick_threshold([one, two], ["one.pt", "two.pt"]) == pytest.approx(0.4)


def with_validation(checkpoint, validation, path):
    """A copy of a trained checkpoint that carries these validation predictions instead of its own."""
    info = torch.load(checkpoint, weights_only=True)
    torch.save({**info, "val_predictions": validation}, path)
    return path


def test_the_threshold_comes_from_the_validation_predictions_the_checkpoint_carries(trained_baseline, tmp_path,
                                                                                    monkeypatch):
    checkpoint, _ = trained_baseline
    first = with_validation(checkpoint, HAND_MADE, tmp_path / "first.pt")
    second = with_validation(checkpoint, SECOND, tmp_path / "second.pt")
    for name, options, expected in (("best", [first], 0.6),
                                     ("screening", [first, "--target-sensitivity", 0.9], 0.3),
                                     ("ensemble", [first, second], 0.4)):
        assert run_main(evaluate, *options, "--out", tmp_path / name, monkeypatch=monkeypatch) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        assert metrics["threshold"] == pytest.approx(expected), name
        predictions = pd.read_csv(tmp_path / name / "predictions.csv")  # and the test images are called by it
        assert (predictions["predicted"] == (predictions["probability_malignant"] >= metrics["threshold"])).all()


def test_a_target_sensitivity_is_met_on_validation(trained_baseline, tmp_path, monkeypatch):
    checkpoint, _ = trained_baseline
    assert run_main(evaluate, checkpoint, "--split", "val", "--target-sensitivity", 0.95, "--out", tmp_path,
                    monkeypatch=monkeypatch) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # The highest threshold that catches 95 % of the k malignant val images is the ceil(0.95 k)-th highest
    # score among them (ties change nothing: the same number clears it).
    validation = torch.load(checkpoint, weights_only=True)["val_predictions"]
    malignant = sorted((p for p, y in zip(validation["fused_probability"], validation["label"]) if y), reverse=True)
    assert metrics["threshold"] == malignant[math.ceil(0.95 * len(malignant)) - 1]
    assert metrics["recall"] >= 0.95  # scored again on the same val images: the same probabilities


def test_an_ensemble_averages_its_members(trained_baseline, tmp_path, monkeypatch):
    first, data = trained_baseline
    second = tmp_path / "small.pt"  # another seed, another image size: each member sees its own
    assert run_main(train, "--data", data, "--img-size", 32, "--epochs", 2, "--seed", 1, "--out", second,
                    monkeypatch=monkeypatch) == 0
    for name, checkpoints in (("first", [first]), ("second", [second]), ("both", [first, second])):
        assert run_main(evaluate, *checkpoints, "--out", tmp_path / name, monkeypatch=monkeypatch) == 0
    predictions = {name: pd.read_csv(tmp_path / name / "predictions.csv") for name in ("first", "second", "both")}
    mean = (predictions["first"]["probability_malignant"] + predictions["second"]["probability_malignant"]) / 2
    assert predictions["both"]["probability_malignant"].tolist() == pytest.approx(mean.tolist())
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert metrics["models"] == ["baseline", "baseline"]


def test_an_ensemble_of_models_validated_on_other_images_is_refused(trained_baseline, tmp_path, monkeypatch,
                                                                    capsys):
    first, _ = trained_baseline
    other = with_validation(first, {**HAND_MADE, "isic_id": [f"w{i}" for i in range(7)]}, tmp_path / "other.pt")
    assert run_main(evaluate, first, other, "--out", tmp_path / "r", monkeypatch=monkeypatch) == 2
    assert "was validated on other images" in capsys.readouterr().err


def test_one_image_is_scored_as_its_split_scores_it(trained_baseline, tmp_path, monkeypatch, capsys):
    # The checkpoint was validated with TTA (its threshold comes from mean-of-8-views scores), so --image
    # must score with TTA too: the same probability as the image's row in the test split's predictions.
    checkpoint, data = trained_baseline
    assert torch.load(checkpoint, weights_only=True)["tta"] is True
    assert run_main(evaluate, checkpoint, "--out", tmp_path / "split", monkeypatch=monkeypatch) == 0
    predictions = pd.read_csv(tmp_path / "split" / "predictions.csv").set_index("isic_id")
    labels = pd.read_csv(data / "labels.csv").query("split == 'test'")
    capsys.readouterr()
    # Ten images: one view and eight differ by only a few thousandths here, so one image could agree by chance.
    # Each with its metadata as labels.csv has it, on the command line (the model weighs it: test_metadata.py).
    for _, row in labels.head(10).iterrows():
        isic_id = row["isic_id"]
        metadata = [word for name in ("age", "sex", "site") if pd.notna(row[name]) for word in (f"--{name}", row[name])]
        assert run_main(evaluate, checkpoint, "--image", data / row["image_path"], *metadata, "--out", tmp_path / "one",
                        monkeypatch=monkeypatch) == 0
        printed = re.search(r"P\(malignant\) = (\S+) ->", capsys.readouterr().out).group(1)
        assert printed == format(predictions.loc[isic_id, "probability_malignant"], ".3f"), isic_id
        assert (tmp_path / "one" / f"grad_cam_{isic_id}.png").exists()


def test_a_new_clinic_sets_its_threshold_on_its_own_images(trained_baseline, tmp_path, monkeypatch, capsys):
    # "The clinic": 30 labelled test images in a folder of their own. The threshold must be the one with the
    # best balanced accuracy on exactly those images, as they are scored, found here by trying every cut.
    checkpoint, data = trained_baseline
    labels = pd.read_csv(data / "labels.csv")
    clinic = labels[labels["split"] == "test"].head(30).assign(image_path=lambda t: [str(data / p) for p in
                                                                                      t["image_path"]])
    (tmp_path / "clinic").mkdir()
    clinic.drop(columns=["cached_path"], errors="ignore").to_csv(tmp_path / "clinic" / "labels.csv", index=False)
    assert run_main(evaluate, checkpoint, "--data", tmp_path / "clinic", "--out", tmp_path / "scored",
                    monkeypatch=monkeypatch) == 0
    scored = pd.read_csv(tmp_path / "scored" / "predictions.csv")
    own_threshold = json.loads((tmp_path / "scored" / "metrics.json").read_text())["threshold"]

    def balanced_accuracy(cut):
        called = scored["probability_malignant"] >= cut
        return (called[scored["label"] == 1].mean() + (~called)[scored["label"] == 0].mean()) / 2

    best = max(balanced_accuracy(cut) for cut in scored["probability_malignant"])
    assert run_main(evaluate, checkpoint, "--threshold-from", tmp_path / "clinic", "--out", tmp_path / "rechosen",
                    monkeypatch=monkeypatch) == 0
    assert "chosen on the 30 images of" in capsys.readouterr().out
    rechosen = json.loads((tmp_path / "rechosen" / "metrics.json").read_text())["threshold"]
    assert min(abs(rechosen - p) for p in scored["probability_malignant"]) < 1e-9  # one of the clinic's scores
    assert balanced_accuracy(rechosen - 1e-12) == pytest.approx(best)
    assert rechosen != own_threshold  # chosen on other images than the checkpoint's validation ones


def test_bfloat16_scoring_is_close_to_float32_and_not_the_same(trained_baseline, tmp_path, monkeypatch):
    # --precision bf16 runs the model in bfloat16 autocast (docs/SPEED.md: about twice as fast where the
    # CPU has bf16 instructions): the probabilities move a little, the ranking hardly.
    checkpoint, data = trained_baseline
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((data / "images").glob("*.jpg"))[:12]:
        (folder / path.name).write_bytes(path.read_bytes())
    scored = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert run_main(evaluate, checkpoint, "--predict", folder, "--precision", precision, "--out", out,
                        monkeypatch=monkeypatch) == 0
        scored[precision] = pd.read_csv(out / "submission.csv")["target"]
    difference = (scored["fp32"] - scored["bf16"]).abs()
    assert 0 < difference.max() < 0.05, difference
    assert scored["fp32"].rank().corr(scored["bf16"].rank()) > 0.9

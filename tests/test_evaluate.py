"""evaluate.py beyond the metrics: test-time augmentation, operating points and ensembles."""
import json

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import evaluate
import train
from conftest import run_main
from evaluate import choose_threshold, dihedral_views, predict


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


def test_a_target_sensitivity_is_met_on_validation(trained_baseline, tmp_path, monkeypatch):
    checkpoint, data = trained_baseline
    assert run_main(evaluate, checkpoint, "--split", "val", "--target-sensitivity", 0.95, "--out", tmp_path,
                    monkeypatch=monkeypatch) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    validation = torch.load(checkpoint, weights_only=True)["val_predictions"]
    assert metrics["threshold"] == choose_threshold(validation["label"], validation["probability"], 0.95)
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
    validations = [torch.load(path, weights_only=True)["val_predictions"] for path in (first, second)]
    val_mean = [(a + b) / 2 for a, b in zip(validations[0]["probability"], validations[1]["probability"])]
    metrics = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert metrics["threshold"] == choose_threshold(validations[0]["label"], val_mean)
    assert metrics["models"] == ["baseline", "baseline"]


def test_an_ensemble_of_models_validated_on_other_images_is_refused(trained_baseline, tmp_path, monkeypatch,
                                                                    capsys):
    first, data = trained_baseline
    table = pd.read_csv(data / "labels.csv")
    table["split"] = table["split"].replace({"val": "train", "test": "val"})  # other validation images
    table["image_path"] = [str(data / path) for path in table["image_path"]]
    (tmp_path / "other").mkdir()
    table.to_csv(tmp_path / "other" / "labels.csv", index=False)
    other = tmp_path / "other.pt"
    assert run_main(train, "--data", tmp_path / "other", "--img-size", 32, "--dry-run", "--out", other,
                    monkeypatch=monkeypatch) == 0
    assert run_main(evaluate, first, other, "--out", tmp_path / "r", monkeypatch=monkeypatch) == 2
    assert "was validated on other images" in capsys.readouterr().err

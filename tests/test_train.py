"""train.py: the baseline must really learn the synthetic set; runs are reproducible; early stopping works."""
import torch

import train
from conftest import run_main
from dataset import build_transforms, CustomDataset
from evaluate import all_metrics, predict
from model import load_checkpoint
from torch.utils.data import DataLoader


def test_baseline_learns_the_synthetic_set(trained_baseline):
    checkpoint, data = trained_baseline
    model, info = load_checkpoint(checkpoint)
    test_set = CustomDataset(data, "test", build_transforms(info["img_size"], train=False))
    probabilities, labels = predict(model, DataLoader(test_set, batch_size=64), "cpu")
    metrics = all_metrics(labels, probabilities, info["threshold"])
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)  # about 0.66
    assert metrics["auc"] > 0.8, metrics
    assert metrics["accuracy"] > majority + 0.08, (metrics, majority)
    assert metrics["balanced_accuracy"] > 0.75, metrics


def test_checkpoint_carries_what_evaluation_needs(trained_baseline):
    checkpoint, data = trained_baseline
    info = torch.load(checkpoint, weights_only=True)
    assert info["model"] == "baseline" and info["img_size"] == 64
    assert 0 < info["threshold"] < 1
    assert len(info["mean"]) == 3 and len(info["std"]) == 3
    assert {"auc", "balanced_accuracy", "recall", "specificity", "loss"} <= set(info["val_metrics"])
    assert 1 <= info["epoch"] <= 12
    assert info["args"]["data"] == str(data) and info["args"]["seed"] == 0


def train_briefly(tmp_path, data, monkeypatch, name, *extra):
    out = tmp_path / f"{name}.pt"
    code = run_main(train, "--data", data, "--img-size", 32, "--epochs", 2, "--out", out, *extra,
                    monkeypatch=monkeypatch)
    assert code == 0
    return torch.load(out, weights_only=True)


def test_same_seed_same_weights_other_seed_other_weights(synthetic_data, tmp_path, monkeypatch):
    first = train_briefly(tmp_path, synthetic_data, monkeypatch, "a", "--seed", 3)
    again = train_briefly(tmp_path, synthetic_data, monkeypatch, "b", "--seed", 3)
    other = train_briefly(tmp_path, synthetic_data, monkeypatch, "c", "--seed", 4)
    for key, value in first["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    assert first["val_metrics"] == again["val_metrics"] and first["threshold"] == again["threshold"]
    assert not torch.equal(first["state_dict"]["head.1.weight"], other["state_dict"]["head.1.weight"])


def test_early_stopping_keeps_the_best_epoch(synthetic_data, tmp_path, monkeypatch, capsys):
    # With a learning rate of 0 nothing improves after epoch 1, so training stops after `patience` more.
    info = train_briefly(tmp_path, synthetic_data, monkeypatch, "stuck", "--lr", 0, "--patience", 2,
                         "--epochs", 10)
    output = capsys.readouterr().out
    assert "no improvement for 2 epochs: stopping early" in output
    assert "epoch   3/10" in output and "epoch   4/10" not in output
    assert info["epoch"] == 1


def test_loss_and_sampler_options_run(synthetic_data, tmp_path, monkeypatch, capsys):
    train_briefly(tmp_path, synthetic_data, monkeypatch, "weighted", "--class-weights", "--dry-run")
    train_briefly(tmp_path, synthetic_data, monkeypatch, "sampled", "--balanced-sampler", "--dry-run")
    assert capsys.readouterr().out.count("epoch   1/1 ") == 2

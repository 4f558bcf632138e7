"""train.py: the baseline must really learn the synthetic set; runs are reproducible; early stopping works."""
import math

import pytest
import torch

import train
from conftest import run_main
from dataset import build_transforms, CustomDataset
from evaluate import all_metrics, choose_threshold, predict
from model import BaselineCNN, build_model, load_checkpoint
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


def test_focal_loss_by_hand():
    # logits (0, ln 3): P(malignant) = 3 / 4. Cross-entropy for a malignant image: -ln(3/4) = 0.2877;
    # focal loss with gamma 2 scales it by (1 - 3/4)^2 = 1/16.
    logits, labels = torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])
    assert train.focal_loss(logits, labels).item() == pytest.approx(-math.log(0.75) / 16)
    assert train.focal_loss(logits, labels, gamma=0).item() == pytest.approx(-math.log(0.75))
    # Weighted: like CrossEntropyLoss, a weighted mean over the batch.
    logits, labels = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]]), torch.tensor([1, 0])
    weight = torch.tensor([1.0, 3.0])
    expected = (3 * -math.log(0.75) / 16 + 1 * -math.log(0.5) / 4) / 4
    assert train.focal_loss(logits, labels, weight).item() == pytest.approx(expected)
    assert train.focal_loss(logits, labels, weight, gamma=0).item() == pytest.approx(
        torch.nn.CrossEntropyLoss(weight=weight)(logits, labels).item())


def test_warmup_then_cosine():
    # 2 warm-up steps out of 10: 1/2, 1, then a cosine over the remaining 8 steps, halfway at step 6.
    factors = [train.warmup_cosine(step, 2, 10) for step in range(11)]
    assert factors[:3] == [0.5, 1.0, 1.0]
    assert factors[6] == pytest.approx(0.5) and factors[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:]))  # never rises after the warm-up
    assert train.warmup_cosine(0, 0, 4) == 1.0


def test_recipe_options_are_used_and_recorded(synthetic_data, tmp_path, monkeypatch):
    info = train_briefly(tmp_path, synthetic_data, monkeypatch, "recipe", "--loss", "focal", "--warmup-epochs", 1,
                         "--backbone-lr-factor", 0.1, "--augment", "strong", "--colour-constancy", "--tta",
                         "--balanced-sampler", "--class-weights")
    assert info["colour_constancy"] is True and info["tta"] is True
    groups = info["training_state"]["optimizer"]["param_groups"] if "training_state" in info else None
    assert groups is None  # a finished run keeps no state to resume
    validation = info["val_predictions"]
    assert len(validation["isic_id"]) == len(validation["probability"]) == len(validation["label"]) > 0
    assert info["threshold"] == choose_threshold(validation["label"], validation["probability"])


def test_the_backbone_learns_slower_than_the_head(synthetic_data, tmp_path, monkeypatch):
    # One epoch, stopped by Ctrl-C just after: the saved optimizer holds both groups' learning rates.
    monkeypatch.setattr(train, "draw_curves", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    out = tmp_path / "slow.pt"
    code = run_main(train, "--data", synthetic_data, "--img-size", 32, "--epochs", 4, "--lr", 0.01,
                    "--backbone-lr-factor", 0.1, "--out", out, monkeypatch=monkeypatch)
    assert code == 130
    groups = torch.load(out, weights_only=True)["training_state"]["optimizer"]["param_groups"]
    head = len(list(BaselineCNN().head.parameters()))  # the Linear layer's weight and bias
    assert [len(group["params"]) for group in groups] == [head, len(list(BaselineCNN().parameters())) - head]
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)


def test_a_linear_probe_trains_the_head_only_and_learns(synthetic_data, tmp_path, monkeypatch, capsys):
    info = train_briefly(tmp_path, synthetic_data, monkeypatch, "probe", "--model", "efficientnet_lite0",
                         "--pretrained", "--freeze-backbone", "--img-size", 64, "--epochs", 30, "--lr", 0.003)
    pretrained = build_model("efficientnet_lite0", pretrained=True).state_dict()
    for name, tensor in info["state_dict"].items():  # batch norm statistics included: the backbone never moved
        assert torch.equal(tensor, pretrained[name]) == (not name.startswith("_fc.")), name
    assert info["val_metrics"]["auc"] > 0.8  # ImageNet features separate the synthetic lesions
    code = run_main(train, "--data", synthetic_data, "--model", "baseline", "--freeze-backbone",
                    "--out", tmp_path / "x.pt", monkeypatch=monkeypatch)
    assert code == 2 and "--freeze-backbone needs --pretrained" in capsys.readouterr().err


def test_loss_and_sampler_options_run(synthetic_data, tmp_path, monkeypatch, capsys):
    train_briefly(tmp_path, synthetic_data, monkeypatch, "weighted", "--class-weights", "--dry-run")
    train_briefly(tmp_path, synthetic_data, monkeypatch, "sampled", "--balanced-sampler", "--dry-run")
    # 239 training images, 80 malignant: an epoch of 1 benign per malignant sees 160 of them.
    train_briefly(tmp_path, synthetic_data, monkeypatch, "subset", "--neg-per-pos", 1, "--dry-run")
    output = capsys.readouterr().out
    assert output.count("epoch   1/1 ") == 3 and "; 160 training images per epoch" in output
    code = run_main(train, "--data", synthetic_data, "--balanced-sampler", "--neg-per-pos", 2, monkeypatch=monkeypatch)
    assert code == 2 and "choose one of --balanced-sampler and --neg-per-pos" in capsys.readouterr().err


def test_bfloat16_learns_as_float32_does_and_float16_needs_a_gpu(synthetic_data, tmp_path, monkeypatch, capsys):
    # Autocast on the CPU runs the same code as on a GPU; here emulated (slowly) where the CPU lacks bf16.
    full = train_briefly(tmp_path, synthetic_data, monkeypatch, "fp32", "--no-tta", "--epochs", 3)
    half = train_briefly(tmp_path, synthetic_data, monkeypatch, "bf16", "--no-tta", "--epochs", 3,
                         "--precision", "bf16")
    assert half["args"]["precision"] == "bf16" and "on cpu, bf16; " in capsys.readouterr().out
    assert abs(half["val_metrics"]["auc"] - full["val_metrics"]["auc"]) < 0.05, (half["val_metrics"],
                                                                                full["val_metrics"])
    assert next(iter(half["state_dict"].values())).dtype == torch.float32  # autocast leaves the weights in fp32
    if not torch.cuda.is_available():
        code = run_main(train, "--data", synthetic_data, "--precision", "fp16", "--out", tmp_path / "x.pt",
                        monkeypatch=monkeypatch)
        assert code == 2 and "--precision fp16 needs a CUDA GPU" in capsys.readouterr().err

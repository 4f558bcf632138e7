"""train.py: the baseline must really learn the synthetic set; runs are reproducible; every option takes effect."""
import math

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

import evaluate
import train
from conftest import interrupt_at_epoch, run_main
from chapters import imbalance
from chapters.cross_validation import cross_validation_folds
from evaluate import all_metrics, choose_threshold
from train import roc_auc
from dataset import CustomDataset, build_transforms, read_split
from model import IMAGENET_MEAN, IMAGENET_STD, build_model, load_checkpoint, predict


def test_baseline_learns_the_synthetic_set(trained_baseline):
    checkpoint, data = trained_baseline
    member = load_checkpoint(checkpoint)
    probabilities, _, labels = evaluate.Models([member], torch.device("cpu")).score(read_split(data, "test"))
    metrics = all_metrics(labels, probabilities, evaluate.pick_threshold([member[1]], [checkpoint]))
    majority = max(sum(labels), len(labels) - sum(labels)) / len(labels)  # about 0.66
    assert metrics["auc"] > 0.8, metrics
    assert metrics["accuracy"] > majority + 0.08, (metrics, majority)
    assert metrics["balanced_accuracy"] > 0.75, metrics


def pairwise_auc(labels, probabilities):
    """AUC as its definition reads: the share of (malignant, benign) pairs ranked right, a tie counting half."""
    malignant = [p for p, y in zip(probabilities, labels) if y]
    benign = [p for p, y in zip(probabilities, labels) if not y]
    return sum((m > b) + 0.5 * (m == b) for m in malignant for b in benign) / (len(malignant) * len(benign))


def test_checkpoint_carries_what_evaluation_needs(trained_baseline):
    checkpoint, data = trained_baseline
    info = torch.load(checkpoint, weights_only=True)
    assert info["model"] == "baseline" and info["img_size"] == 64
    assert info["tta"] is True  # on by default
    assert (tuple(info["mean"]), tuple(info["std"])) == (IMAGENET_MEAN, IMAGENET_STD)
    assert "threshold" not in info and "colour_constancy" not in info  # evaluate.py chooses the threshold
    assert "training_state" not in info  # a finished run keeps only what evaluation needs
    assert 1 <= info["epoch"] <= 12
    assert info["args"]["data"] == str(data) and info["args"]["seed"] == 0
    # The validation predictions, one per val image in labels.csv's order, with its true label...
    val = read_split(data, "val")
    predictions = info["val_predictions"]
    assert predictions["isic_id"] == val["isic_id"].tolist() and predictions["label"] == val["label"].tolist()
    assert all(0 <= p <= 1 for p in predictions["fused_probability"])
    # ...and the metrics of the best epoch, worked out again here from the image model's predictions (the
    # metadata's fusion, fitted once training is over, comes on top: tests/test_metadata.py).
    labels, probabilities = predictions["label"], predictions["image_probability"]
    assert info["val_metrics"]["auc"] == pytest.approx(pairwise_auc(labels, probabilities))
    log_loss = -sum(math.log(p if y else 1 - p) for p, y in zip(probabilities, labels)) / len(labels)
    assert info["val_metrics"]["loss"] == pytest.approx(log_loss)
    accuracy = sum((p >= 0.5) == y for p, y in zip(probabilities, labels)) / len(labels)
    assert info["val_metrics"]["accuracy"] == pytest.approx(accuracy)
    log = pd.read_csv(checkpoint.with_name("baseline-log.csv"))
    assert log.loc[log["epoch"] == info["epoch"], "val_auc"].item() == pytest.approx(info["val_metrics"]["auc"])
    assert log["val_auc"].max() == pytest.approx(info["val_metrics"]["auc"])  # the best epoch is the one kept


def train_briefly(tmp_path, data, monkeypatch, name, *extra):
    out = tmp_path / f"{name}.pt"
    code = run_main(train, "--data", data, "--img-size", 32, "--epochs", 2, "--out", out, *extra,
                    monkeypatch=monkeypatch)
    assert code == 0
    return torch.load(out, weights_only=True)


def test_same_seed_same_weights_other_seed_other_weights(synthetic_data, tmp_path, monkeypatch):
    first = train_briefly(tmp_path, synthetic_data, monkeypatch, "a", "--seed", 3, "--no-tta")
    again = train_briefly(tmp_path, synthetic_data, monkeypatch, "b", "--seed", 3, "--no-tta")
    other = train_briefly(tmp_path, synthetic_data, monkeypatch, "c", "--seed", 4, "--no-tta")
    for key, value in first["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    assert first["val_metrics"] == again["val_metrics"] and first["val_predictions"] == again["val_predictions"]
    assert not torch.equal(first["state_dict"]["head.1.weight"], other["state_dict"]["head.1.weight"])


def test_early_stopping_keeps_the_best_epoch(synthetic_data, tmp_path, monkeypatch, capsys):
    # The validation score is scripted, so that what training does with it is known exactly: best at
    # epoch 2, then worse for 2 epochs, which with --patience 2 must end the run after epoch 4. Epoch 5
    # would have been better still: a run that did not stop would keep it.
    scripted = [0.70, 0.90, 0.85, 0.80, 0.95, 0.96, 0.97, 0.98, 0.99, 1.00]
    weights_validated = []  # the model's weights as each epoch's validation saw them
    real_validate = train.validate

    def scripted_validate(run, *args):
        val = real_validate(run, *args)
        weights_validated.append({name: tensor.detach().clone() for name, tensor in run.model.state_dict().items()})
        val["auc"] = val["score"] = scripted[len(weights_validated) - 1]
        return val

    monkeypatch.setattr(train, "validate", scripted_validate)
    info = train_briefly(tmp_path, synthetic_data, monkeypatch, "stopped", "--no-tta", "--patience", 2,
                         "--epochs", 10)
    output = capsys.readouterr().out
    assert "no improvement for 2 epochs: stopped early" in output
    assert "epoch   4/10" in output and "epoch   5/10" not in output
    assert len(weights_validated) == 4
    assert pd.read_csv(tmp_path / "stopped-log.csv")["val_auc"].tolist() == scripted[:4]
    # The checkpoint holds epoch 2: its number, its score and its weights, not the last epoch's.
    assert info["epoch"] == 2 and info["val_metrics"]["auc"] == 0.90
    for name, tensor in info["state_dict"].items():
        assert torch.equal(tensor, weights_validated[1][name]), name
    assert not torch.equal(info["state_dict"]["head.1.weight"], weights_validated[3]["head.1.weight"])


def test_patience_zero_trains_every_epoch_and_keeps_the_last(synthetic_data, tmp_path, monkeypatch, capsys):
    scripted = [0.90, 0.80, 0.70]  # the best epoch is the first: early stopping would keep it
    real_validate = train.validate

    def scripted_validate(run, *args):
        val = real_validate(run, *args)
        val["auc"] = val["score"] = scripted[len(seen)]
        seen.append({name: tensor.detach().clone() for name, tensor in run.model.state_dict().items()})
        return val

    seen = []
    monkeypatch.setattr(train, "validate", scripted_validate)
    info = train_briefly(tmp_path, synthetic_data, monkeypatch, "fixed", "--no-tta", "--patience", 0, "--epochs", 3)
    assert len(seen) == 3 and "stopped early" not in capsys.readouterr().out
    assert info["epoch"] == 3 and info["val_metrics"]["auc"] == 0.70
    for name, tensor in info["state_dict"].items():
        assert torch.equal(tensor, seen[2][name]), name


def test_patience_zero_spends_the_eight_views_on_the_kept_epoch_only(synthetic_data, tmp_path, monkeypatch):
    # With --patience 0 the epochs before the last are scored in one view, for the curves; what is kept
    # (weights, out-of-fold predictions, the fusion, so the threshold) is what 8 views every epoch gave.
    options = ("--folds", 2, "--patience", 0, "--epochs", 3)
    lean = train_briefly(tmp_path, synthetic_data, monkeypatch, "lean", *options)
    real_validate, asked = train.validate, []

    def every_epoch_in_eight_views(run, hardware, tta):
        asked.append(tta)
        return real_validate(run, hardware, True)

    monkeypatch.setattr(train, "validate", every_epoch_in_eight_views)
    full = train_briefly(tmp_path, synthetic_data, monkeypatch, "full", *options)
    assert asked == [False, False, True] * 2
    assert lean["val_predictions"] == full["val_predictions"] and lean["fusion"] == full["fusion"]
    for name, tensor in full["state_dict"].items():
        assert torch.equal(lean["state_dict"][name], tensor), name
    for fold in (1, 2):  # the log says how each epoch was scored
        assert pd.read_csv(tmp_path / f"lean-fold{fold}-log.csv")["val_views"].tolist() == [1, 1, 8]

def test_focal_loss_by_hand():
    # logits (0, ln 3): P(malignant) = 3 / 4. Cross-entropy for a malignant image: -ln(3/4) = 0.2877;
    # focal loss with gamma 2 scales it by (1 - 3/4)^2 = 1/16.
    logits, labels = torch.tensor([[0.0, math.log(3)]]), torch.tensor([1])
    assert imbalance.focal_loss(logits, labels).item() == pytest.approx(-math.log(0.75) / 16)
    assert imbalance.focal_loss(logits, labels, gamma=0).item() == pytest.approx(-math.log(0.75))
    # Weighted: like CrossEntropyLoss, a weighted mean over the batch.
    logits, labels = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]]), torch.tensor([1, 0])
    weight = torch.tensor([1.0, 3.0])
    expected = (3 * -math.log(0.75) / 16 + 1 * -math.log(0.5) / 4) / 4
    assert imbalance.focal_loss(logits, labels, weight).item() == pytest.approx(expected)
    assert imbalance.focal_loss(logits, labels, weight, gamma=0).item() == pytest.approx(
        torch.nn.CrossEntropyLoss(weight=weight)(logits, labels).item())


def dihedral_probabilities(model, images):
    """P(malignant) averaged over the 8 symmetries of the square, built here from quarter turns and the
    transpose (model.py builds them from quarter turns and a left-right flip: the same 8, another way)."""
    views = [images.rot90(k, dims=(2, 3)) for k in range(4)]
    views += [view.transpose(2, 3) for view in views]
    with torch.no_grad():
        return torch.stack([model(view).softmax(dim=1)[:, 1] for view in views]).mean(0), \
            model(images).softmax(dim=1)[:, 1]


def test_recipe_options_are_used_and_recorded(synthetic_data, tmp_path, monkeypatch):
    # Every batch's loss goes through a spy on focal_loss, which sees the labels drawn and the class weights.
    calls = []
    real_focal_loss = imbalance.focal_loss

    def counting_focal_loss(logits, labels, weight=None, gamma=2.0):
        calls.append((labels.tolist(), weight))
        return real_focal_loss(logits, labels, weight, gamma)

    monkeypatch.setattr(imbalance, "focal_loss", counting_focal_loss)
    info = train_briefly(tmp_path, synthetic_data, monkeypatch, "recipe", "--loss", "focal", "--class-weights",
                         "--tta")
    training = read_split(synthetic_data, "train")
    n, malignant = len(training), int(training["label"].sum())  # 239 and 80
    benign = n - malignant

    # --loss focal: every batch of both epochs (32 images, the last partial batch dropped) used it.
    assert len(calls) == 2 * (n // 32)
    # --class-weights: n / (2 x class count), so that both classes weigh n / 2 in all.
    for _, weight in calls:
        assert weight is not None and weight.tolist() == pytest.approx([n / (2 * benign), n / (2 * malignant)])
    # The batches are the plain ones: the loss alone answers the imbalance (about 1 in 3 malignant).
    drawn = [label for labels, _ in calls for label in labels]
    assert malignant / n < 0.35 and 0.25 < sum(drawn) / len(drawn) < 0.42

    # --tta: each stored validation probability is the mean over the 8 views, for the saved weights.
    model, checkpoint = load_checkpoint(tmp_path / "recipe.pt")
    val = read_split(synthetic_data, "val")
    dataset = CustomDataset(val, build_transforms(32, False, checkpoint["mean"], checkpoint["std"]))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    averaged, one_view = dihedral_probabilities(model, images)
    stored = info["val_predictions"]["image_probability"]  # the image model's, before the metadata joins in
    assert stored == pytest.approx(averaged.tolist(), abs=1e-5)
    assert stored != pytest.approx(one_view.tolist(), abs=1e-3)  # so one view alone would not pass

    # And the checkpoint records the recipe.
    assert info["tta"] is True
    assert {key: info["args"][key] for key in ("loss", "class_weights", "balanced_sampler", "tta")} == {
        "loss": "focal", "class_weights": True, "balanced_sampler": False, "tta": True}


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


def test_negatives_per_positive_and_its_conflict_with_the_balanced_sampler(synthetic_data, tmp_path, monkeypatch,
                                                                          capsys):
    # 239 training images, 80 malignant: an epoch of 1 benign per malignant sees 160 of them.
    train_briefly(tmp_path, synthetic_data, monkeypatch, "subset", "--neg-per-pos", 1, "--dry-run")
    output = capsys.readouterr().out
    assert "epoch   1/1 " in output and "; 160 training images per epoch" in output
    code = run_main(train, "--data", synthetic_data, "--balanced-sampler", "--neg-per-pos", 2, monkeypatch=monkeypatch)
    assert code == 2 and "choose one of --balanced-sampler and --neg-per-pos" in capsys.readouterr().err
    # Class weights on batches a sampler has already rebalanced would count the malignant class twice over.
    for sampler in (["--balanced-sampler"], ["--neg-per-pos", 2]):
        code = run_main(train, "--data", synthetic_data, "--class-weights", *sampler, "--out", tmp_path / "w.pt",
                        monkeypatch=monkeypatch)
        error = capsys.readouterr().err
        assert code == 2 and f"--class-weights with {sampler[0]} corrects the class imbalance twice" in error
        assert error.count("\n") == 1 and not (tmp_path / "w.pt").exists()


def test_bfloat16_learns_as_float32_does_and_float16_needs_a_gpu(synthetic_data, tmp_path, monkeypatch, capsys):
    # Autocast on the CPU runs the same code as on a GPU; here emulated (slowly) where the CPU lacks bf16.
    # A hook on the first convolution records the dtype it computed in, in training and validation alike.
    computed_in = {}
    real_build_model = train.build_model

    def watched_build_model(name, pretrained=False):
        model = real_build_model(name, pretrained)
        model.features[0].register_forward_hook(lambda module, inputs, output: computed_in[run].add(output.dtype))
        return model

    monkeypatch.setattr(train, "build_model", watched_build_model)
    runs = {}
    for run, extra in (("fp32", []), ("bf16", ["--precision", "bf16"])):
        computed_in[run] = set()
        runs[run] = train_briefly(tmp_path, synthetic_data, monkeypatch, run, "--no-tta", "--epochs", 3, *extra)
    full, half = runs["fp32"], runs["bf16"]
    assert half["args"]["precision"] == "bf16" and "on cpu, bf16; " in capsys.readouterr().out
    # bf16 really ran: the convolutions computed in bfloat16 (and in float32 without it)...
    assert computed_in == {"fp32": {torch.float32}, "bf16": {torch.bfloat16}}
    # ...so the same seed gave other numbers from the first epoch on (two fp32 runs agree bit for bit)...
    first_losses = [pd.read_csv(tmp_path / f"{run}-log.csv")["train_loss"][0] for run in ("fp32", "bf16")]
    assert first_losses[0] != first_losses[1] and first_losses[1] == pytest.approx(first_losses[0], abs=0.05)
    assert not torch.equal(half["state_dict"]["head.1.weight"], full["state_dict"]["head.1.weight"])
    # ...and it learnt as well.
    assert abs(half["val_metrics"]["auc"] - full["val_metrics"]["auc"]) < 0.05, (half["val_metrics"],
                                                                                full["val_metrics"])
    assert next(iter(half["state_dict"].values())).dtype == torch.float32  # autocast leaves the weights in fp32
    if not torch.cuda.is_available():
        code = run_main(train, "--data", synthetic_data, "--precision", "fp16", "--out", tmp_path / "x.pt",
                        monkeypatch=monkeypatch)
        assert code == 2 and "--precision fp16 needs a CUDA GPU" in capsys.readouterr().err


def test_cross_validation_saves_one_checkpoint_scored_out_of_fold(synthetic_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cv.pt"
    assert run_main(train, "--data", synthetic_data, "--img-size", 32, "--epochs", 2, "--folds", 3, "--out", out,
                    monkeypatch=monkeypatch) == 0
    assert sorted(path.name for path in tmp_path.glob("*.pt")) == ["cv.pt"]  # the folds' files are inside it
    model, info = load_checkpoint(out)
    assert info["folds"] == 3 and len(info["epoch"]) == 3 and len(model.members) == 3
    # Out of fold: every train and val image once, each scored by the one model that did not train on it.
    pool = pd.concat([read_split(synthetic_data, "train"), read_split(synthetic_data, "val")], ignore_index=True)
    val = info["val_predictions"]
    assert val["isic_id"] == sorted(pool["isic_id"])
    fold_of = dict(zip(pool["isic_id"], cross_validation_folds(pool, 3, seed=0)))
    pool = pool.set_index("isic_id").loc[val["isic_id"]].reset_index()
    transform = build_transforms(info["img_size"], train=False, mean=info["mean"], std=info["std"])
    loader = DataLoader(CustomDataset(pool, transform), batch_size=64)
    by_member = [predict(member, loader, "cpu", tta=True)[0] for member in model.members]
    for i, (image, probability) in enumerate(zip(val["isic_id"], val["image_probability"])):
        assert probability == pytest.approx(by_member[fold_of[image]][i], abs=1e-6)
    assert val["label"] == pool["label"].tolist()
    assert info["val_metrics"]["auc"] == pytest.approx(roc_auc(val["label"], val["image_probability"]))
    # The metadata's fusion is fitted on all of those out-of-fold predictions, and the threshold chosen on it.
    assert info["fusion"]["fitted_on"] == len(pool)
    # At test time, the mean of the three models' probabilities.
    ensemble, _ = predict(model, loader, "cpu", tta=True)
    assert ensemble == pytest.approx([sum(p) / 3 for p in zip(*by_member)], abs=1e-6)
    assert evaluate.pick_threshold([info], [out]) == choose_threshold(val["label"], val["fused_probability"])
    # More folds than lesions of a class: every fold could not validate on both classes.
    assert run_main(train, "--data", synthetic_data, "--folds", 500, "--out", out, monkeypatch=monkeypatch) == 2
    assert "500 folds need both classes in every fold" in capsys.readouterr().err


def test_cross_validation_interrupted_between_folds_carries_on(synthetic_data, tmp_path, monkeypatch, capsys):
    options = ["--data", synthetic_data, "--img-size", 32, "--epochs", 2, "--folds", 2, "--workers", 0]
    assert run_main(train, *options, "--out", tmp_path / "whole.pt", monkeypatch=monkeypatch) == 0
    train_one_epoch = interrupt_at_epoch(3, monkeypatch)  # Ctrl-C in the first epoch of fold 2
    assert run_main(train, *options, "--out", tmp_path / "cut.pt", monkeypatch=monkeypatch) == 130
    assert f"continue with: python train.py --resume {tmp_path / 'cut-fold1.pt'}" in capsys.readouterr().out
    monkeypatch.setattr(train, "train_one_epoch", train_one_epoch)
    assert run_main(train, "--resume", tmp_path / "cut-fold1.pt", monkeypatch=monkeypatch) == 0
    assert "fold 1 of 2" not in capsys.readouterr().out  # not trained again
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("whole.pt", "cut.pt"))
    assert a["val_predictions"] == b["val_predictions"] and a["epoch"] == b["epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key

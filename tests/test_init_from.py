"""train.py --init-from: a start's weights at the first step, its name in the checkpoint, --resume without
it, and evaluate.py's warning about images the start learnt from."""
import hashlib
import shutil

import pandas as pd
import pytest
import torch

import evaluate
import train
from conftest import interrupt_at_epoch, run_main


@pytest.fixture(scope="module")
def tuned(trained_baseline, tmp_path_factory):
    """One epoch from the trained baseline as a start: (checkpoint, the first step's weights and
    learning rate, the start, its data)."""
    start, data = trained_baseline
    out, first = tmp_path_factory.mktemp("tuned") / "tuned.pt", {}
    train_one_epoch = train.train_one_epoch

    def record_the_first_step(run, *args, **kwargs):
        first.setdefault("weights", {k: v.clone() for k, v in run.network.state_dict().items()})
        first.setdefault("lr", run.optimizer.param_groups[0]["lr"])
        return train_one_epoch(run, *args, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(train, "train_one_epoch", record_the_first_step)
        assert run_main(train, "--data", data, "--img-size", 32, "--epochs", 1, "--init-from", start,
                        "--out", out, monkeypatch=monkeypatch) == 0
    return out, first, start, data


def test_the_first_step_starts_from_the_start_and_the_checkpoint_names_it(tuned):
    out, first, start, data = tuned
    start_weights = torch.load(start, weights_only=True)["state_dict"]
    assert first["weights"].keys() == start_weights.keys()
    for name, tensor in start_weights.items():  # every weight, the head's included
        assert torch.equal(first["weights"][name], tensor), name
    assert first["lr"] == 3e-4  # as --pretrained: small steps, not to spoil what it knows
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["start"]["sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    assert checkpoint["start"]["file"] == str(start) and "weights" not in checkpoint["start"]
    # A start made by train.py: the lesions of its train and val rows, not its test rows.
    table = pd.read_csv(data / "labels.csv", dtype=str)
    learnt_from = table[table["split"] != "test"]
    assert checkpoint["start"]["lesions"] == sorted(set(learnt_from["group"]))
    assert checkpoint["start"]["images"] == sorted(learnt_from["isic_id"])
    assert checkpoint["args"]["start"] is None and checkpoint["args"]["pretrained"]
    assert len(out.read_bytes()) < 1.2 * len(start.read_bytes())  # the start's weights dropped


def test_evaluate_warns_on_images_the_start_learnt_from(tuned, tmp_path, monkeypatch, capsys):
    out, _, _, data = tuned
    assert run_main(evaluate, out, "--split", "val", "--no-tta", "--out", tmp_path / "val",
                    monkeypatch=monkeypatch) == 0
    val = (pd.read_csv(data / "labels.csv")["split"] == "val").sum()
    assert f"warning: {val} of the {val} scored images" in capsys.readouterr().out
    assert pd.read_json(tmp_path / "val" / "metrics.json", typ="series")["scored_images_seen_by_start"] == val
    assert run_main(evaluate, out, "--no-tta", "--out", tmp_path / "test", monkeypatch=monkeypatch) == 0
    assert "warning" not in capsys.readouterr().out  # the start's test split it never saw
    assert pd.read_json(tmp_path / "test" / "metrics.json", typ="series")["scored_images_seen_by_start"] == 0


def test_a_start_that_cannot_be_one_is_refused(trained_baseline, synthetic_data, tmp_path, monkeypatch, capsys):
    start, data = trained_baseline
    common = ["--data", data, "--img-size", 32, "--epochs", 1, "--out", tmp_path / "x.pt"]
    assert run_main(train, *common, "--model", "resnet", "--init-from", start, monkeypatch=monkeypatch) == 2
    assert f"{start} is a baseline, not a resnet; add --model baseline" in capsys.readouterr().err
    folds = tmp_path / "folds.pt"  # as a --folds 2 run's checkpoint says it is
    torch.save({**torch.load(start, weights_only=True), "folds": 2}, folds)
    assert run_main(train, *common, "--init-from", folds, monkeypatch=monkeypatch) == 2
    assert f"{folds} is a 2-fold ensemble; start from one model" in capsys.readouterr().err
    assert run_main(train, *common, "--init-from", tmp_path / "none.pt", monkeypatch=monkeypatch) == 2
    assert (f"{tmp_path / 'none.pt'} not found; give a checkpoint of train.py, or make the skin start: "
            "python starts/make_skin_start.py") in capsys.readouterr().err


def test_resumed_between_folds_with_metadata_and_no_start_file_ends_as_uninterrupted(
        trained_baseline, tmp_path, monkeypatch, capsys):
    start, data = trained_baseline
    copy = shutil.copy(start, tmp_path / "start.pt")
    options = ["--data", data, "--img-size", 32, "--epochs", 1, "--folds", 2, "--workers", 0,
               "--init-from", copy]
    assert run_main(train, *options, "--out", tmp_path / "whole.pt", monkeypatch=monkeypatch) == 0
    train_one_epoch = interrupt_at_epoch(2, monkeypatch)  # Ctrl-C in the first epoch of fold 2
    assert run_main(train, *options, "--out", tmp_path / "cut.pt", monkeypatch=monkeypatch) == 130
    monkeypatch.setattr(train, "train_one_epoch", train_one_epoch)
    (tmp_path / "start.pt").unlink()  # fold 2 starts from the start's weights the run saved
    capsys.readouterr()
    assert run_main(train, "--resume", tmp_path / "cut-fold1.pt", monkeypatch=monkeypatch) == 0
    assert "fold 1 of 2" not in capsys.readouterr().out
    a, b = (torch.load(tmp_path / name, weights_only=True) for name in ("whole.pt", "cut.pt"))
    assert a["val_predictions"] == b["val_predictions"] and a["fusion"] == b["fusion"]
    assert a["start"] == b["start"] and b["start"]["file"] == str(copy)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key

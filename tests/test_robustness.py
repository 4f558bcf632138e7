"""Bad input, hostile files and interrupted runs: each case of the README's table, in the same order."""
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

import prepare_data
from conftest import make_image, ROOT, run_main, run_script
from helpers.files import DataError, save_atomically
from helpers.images import inspect_image, load_image
from model import BaselineCNN, build_model, load_checkpoint, save_checkpoint


def isic_folder(root, labels, ids=None):
    """An ISIC-Archive-style folder: metadata.csv with benign_malignant, and one image per row."""
    ids = ids or [f"ISIC_{i:07d}" for i in range(len(labels))]
    for i, isic_id in enumerate(ids):
        if "/" not in isic_id:
            make_image(root / f"{isic_id}.jpg", colour=(i * 3 % 256, 90, 60))
    pd.DataFrame({"isic_id": ids, "benign_malignant": labels}).to_csv(root / "metadata.csv", index=False)
    return root


def prepare(monkeypatch, source, out, *extra):
    return run_main(prepare_data, "--source", source, "--out", out, *extra, monkeypatch=monkeypatch)


# --- Metadata -----------------------------------------------------------------------------------------

def test_empty_csv(tmp_path, monkeypatch, capsys):
    (tmp_path / "metadata.csv").write_text("")
    assert prepare(monkeypatch, tmp_path, tmp_path / "out") == 2
    assert "metadata.csv is empty" in capsys.readouterr().err


def test_labels_outside_the_known_values_and_empty_labels_are_excluded_and_counted(tmp_path, monkeypatch, capsys):
    labels = ["benign", "malignant"] * 10 + ["maybe", "maybe", None]
    assert prepare(monkeypatch, isic_folder(tmp_path / "src", labels), tmp_path / "out") == 0
    output = capsys.readouterr().out
    assert "excluded 2 rows with diagnosis 'maybe'" in output
    assert "excluded 1 rows with diagnosis '(empty)'" in output
    assert len(pd.read_csv(tmp_path / "out" / "labels.csv")) == 20


def test_an_id_listed_twice_with_the_same_label_is_kept_once(tmp_path, monkeypatch, capsys):
    ids = [f"ISIC_{i:07d}" for i in range(20)] + ["ISIC_0000003"]
    root = isic_folder(tmp_path / "src", ["benign", "malignant"] * 10 + ["malignant"], ids)
    assert prepare(monkeypatch, root, tmp_path / "out") == 0
    assert "skipped 1 rows: listed twice (kept once): ISIC_0000003" in capsys.readouterr().out
    assert len(pd.read_csv(tmp_path / "out" / "labels.csv")) == 20


def test_duplicate_ids_with_conflicting_labels(tmp_path, monkeypatch, capsys):
    ids = [f"ISIC_{i:07d}" for i in range(20)] + ["ISIC_0000003"]
    root = isic_folder(tmp_path / "src", ["benign", "malignant"] * 10 + ["benign"], ids)
    assert prepare(monkeypatch, root, tmp_path / "out") == 2
    assert "image id ISIC_0000003 appears with both labels" in capsys.readouterr().err


def test_one_image_under_two_labels_stops_naming_both_files(tmp_path, monkeypatch, capsys):
    """The same bytes in benign/ and malignant/ is a label conflict, not a duplicate: never train on both."""
    root = tmp_path / "folders"
    for i in range(12):
        make_image(root / "benign" / f"b{i}.png", colour=(i * 20, 50, 50))
        make_image(root / "malignant" / f"m{i}.png", colour=(50, i * 20, 50))
    (root / "malignant" / "also_b3.png").write_bytes((root / "benign" / "b3.png").read_bytes())
    assert prepare(monkeypatch, root, tmp_path / "out") == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
    assert f"{root / 'benign' / 'b3.png'} (benign) and {root / 'malignant' / 'also_b3.png'} (malignant)" in error
    assert "same image" in error and not (tmp_path / "out" / "labels.csv").exists()


def test_a_class_with_no_images(tmp_path, monkeypatch, capsys):
    assert prepare(monkeypatch, isic_folder(tmp_path / "src", ["benign"] * 20), tmp_path / "out") == 2
    assert "no malignant images at all (20 benign)" in capsys.readouterr().err
    # As an external test set one class is allowed, with a warning.
    assert prepare(monkeypatch, tmp_path / "src", tmp_path / "ext", "--test-only") == 0
    assert "warning: no malignant images, so AUC and sensitivity will be undefined" in capsys.readouterr().out


def test_a_split_left_with_one_class(tmp_path, monkeypatch, capsys):
    root = isic_folder(tmp_path / "src", ["benign"] * 30 + ["malignant"] * 2)
    assert prepare(monkeypatch, root, tmp_path / "out") == 2
    assert "the test split has no malignant images: only 2 malignant groups in all" in capsys.readouterr().err


def test_an_id_that_leads_outside_the_data_folder(tmp_path, monkeypatch, capsys):
    make_image(tmp_path / "secret.jpg")
    ids = [f"ISIC_{i:07d}" for i in range(20)] + ["../secret"]
    root = isic_folder(tmp_path / "src", ["benign", "malignant"] * 10 + ["benign"], ids)
    assert prepare(monkeypatch, root, tmp_path / "out") == 2
    assert "image id '../secret' leads outside" in capsys.readouterr().err


def test_an_edited_labels_csv_with_a_bad_label_or_an_escaping_path(tmp_path, capsys):
    make_image(tmp_path / "data" / "images" / "a.jpg")
    rows = {"isic_id": ["a"], "image_path": ["images/a.jpg"], "label": [2], "split": ["train"]}
    pd.DataFrame(rows).to_csv(tmp_path / "data" / "labels.csv", index=False)
    step = run_script("train.py", "--data", tmp_path / "data")
    assert step.returncode == 2 and "line 2: label '2' is not 0 (benign) or 1 (malignant)" in step.stderr
    rows.update(label=[1], image_path=["../../etc/passwd"])
    pd.DataFrame(rows).to_csv(tmp_path / "data" / "labels.csv", index=False)
    step = run_script("train.py", "--data", tmp_path / "data")
    assert step.returncode == 2 and "image path ../../etc/passwd leads outside" in step.stderr


# --- Images -------------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_an_image_of_absurd_size_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # a 40 x 30 image stands in for a gigantic one
    path = make_image(tmp_path / "bomb.png")
    with pytest.raises(DataError, match=r"bomb.png claims 40x30 pixels, more than the 1,000 allowed"):
        load_image(path)
    assert inspect_image(path)[1].startswith("unreadable (")


def test_an_image_that_vanished_after_preparation_stops_training_with_its_name(synthetic_data, tmp_path):
    data = tmp_path / "data"
    table = pd.read_csv(synthetic_data / "labels.csv")
    table["image_path"] = [str(synthetic_data / p) for p in table["image_path"]]
    vanished = tmp_path / "vanished.jpg"
    table.loc[table.index[table["split"] == "train"][-1], "image_path"] = str(vanished)  # read mid-epoch
    data.mkdir()
    table.to_csv(data / "labels.csv", index=False)
    for workers in (0, 1):  # read in the training process, or in a worker whose traceback must not show
        step = run_script("train.py", "--data", data, "--img-size", 32, "--epochs", 1, "--workers", workers,
                          "--out", tmp_path / "model.pt")
        assert step.returncode == 2
        assert "image not found:" in step.stderr and "vanished.jpg" in step.stderr and "Traceback" not in step.stderr


# --- Checkpoints --------------------------------------------------------------------------------------

VALIDATION = {"isic_id": ["a", "b"], "image_probability": [0.25, 0.75], "label": [0, 1]}  # what a checkpoint carries


class RunsCode:
    """Unpickling this would run a shell command: the kind of file weights_only=True refuses."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker, path = tmp_path / "code-ran", tmp_path / "hostile.pt"
    torch.save({"state_dict": BaselineCNN().state_dict(), "model": "baseline", "img_size": 64, "mean": [0.5] * 3,
                "std": [0.5] * 3, "tta": False, "val_predictions": VALIDATION, "payload": RunsCode(marker)}, path)
    for step in (run_script("evaluate.py", path), run_script("train.py", "--resume", path)):
        assert step.returncode == 2
        assert "refused to load" in step.stderr and "could run code" in step.stderr
    assert not marker.exists()


def test_a_checkpoint_of_another_model(tmp_path):
    path = tmp_path / "mixed.pt"
    save_checkpoint(path, build_model("resnet").state_dict(), model="baseline", img_size=64, mean=[0.5] * 3,
                    std=[0.5] * 3, tta=False, val_predictions=VALIDATION)
    with pytest.raises(ValueError, match="do not fit the 'baseline' model"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", None])
def test_a_file_that_is_not_a_checkpoint(tmp_path, content):
    path = tmp_path / "other.pt"
    if content is None:
        torch.save({"weights": [1, 2, 3]}, path)  # a real torch file, but not one of ours
    else:
        path.write_bytes(content)
    step = run_script("evaluate.py", path)
    assert step.returncode == 2 and f"{path} is not a checkpoint" in step.stderr and "Traceback" not in step.stderr


# --- Interrupted runs and reproducibility ----------------------------------------------------------------

def test_killed_and_resumed_run_ends_with_the_same_weights(synthetic_data, tmp_path):
    # In one process (--workers 0): worker processes would start a new random stream after the restart.
    options = ["--data", synthetic_data, "--img-size", 32, "--epochs", 6, "--patience", 10, "--workers", 0]
    whole = run_script("train.py", *options, "--out", tmp_path / "whole.pt")
    assert whole.returncode == 0, whole.stderr

    interrupted = tmp_path / "interrupted.pt"
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, options), "--out", interrupted],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("epoch   2/6"):
            process.send_signal(signal.SIGTERM)
            break
    output += process.stdout.readlines()
    assert process.wait(timeout=60) == 130, "".join(output)
    # It stopped at once, not after the remaining epochs, and said how to carry on.
    assert "epoch   6/6" not in "".join(output)
    assert "interrupted; epoch" in "".join(output) and "--resume" in "".join(output)
    assert "training_state" in torch.load(interrupted, weights_only=True)

    resumed = run_script("train.py", "--resume", interrupted)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"resuming .* after epoch [1-5] of 6", resumed.stdout), resumed.stdout

    def last_epoch(text):  # the validation figures of epoch 6, without the timings
        return re.search(r"epoch   6/6 .*val AUC \S+", text).group()

    assert last_epoch(resumed.stdout) == last_epoch(whole.stdout)
    a = torch.load(tmp_path / "whole.pt", weights_only=True)
    b = torch.load(interrupted, weights_only=True)
    assert a["epoch"] == b["epoch"] and a["val_metrics"] == b["val_metrics"]
    assert a["val_predictions"] == b["val_predictions"]  # and so the threshold evaluate.py will choose
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert "training_state" not in b  # a finished run keeps only what evaluation needs


def test_same_seed_same_split(tmp_path, monkeypatch):
    labels = ["benign", "malignant", "benign"] * 20
    root = isic_folder(tmp_path / "src", labels)
    for out, seed in (("a", 5), ("b", 5), ("c", 6)):
        assert prepare(monkeypatch, root, tmp_path / out, "--seed", seed) == 0
    a, b, c = (pd.read_csv(tmp_path / name / "labels.csv") for name in "abc")
    pd.testing.assert_frame_equal(a, b)
    assert not a["split"].equals(c["split"])


def test_a_finished_run_has_nothing_to_resume(trained_baseline):
    checkpoint, _ = trained_baseline
    step = run_script("train.py", "--resume", checkpoint)
    assert step.returncode == 2 and "finished" in step.stderr and "nothing to resume" in step.stderr


def test_a_cross_validated_run_killed_in_its_second_fold_resumes_there(synthetic_data, tmp_path):
    options = ["--data", synthetic_data, "--img-size", 32, "--epochs", 3, "--folds", 3, "--workers", 0, "--no-metadata"]
    whole = run_script("train.py", *options, "--out", tmp_path / "whole.pt")
    assert whole.returncode == 0, whole.stderr

    interrupted = tmp_path / "interrupted.pt"
    process = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *map(str, options), "--out", interrupted],
                               cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    output, fold = [], None
    for line in process.stdout:
        output.append(line)
        fold = line.split()[1] if line.startswith("fold ") else fold
        if fold == "2" and line.startswith("epoch   2/3"):  # fold 2's first epoch is saved by then
            process.send_signal(signal.SIGTERM)
            break
    output += process.stdout.readlines()
    assert process.wait(timeout=60) == 130, "".join(output)
    fold_2 = tmp_path / "interrupted-fold2.pt"
    assert f"continue with: python train.py --resume {fold_2}" in "".join(output)
    assert not interrupted.exists()  # the folds are joined into one checkpoint only at the end

    resumed = run_script("train.py", "--resume", fold_2)
    assert resumed.returncode == 0, resumed.stderr
    assert "fold 1 of 3" not in resumed.stdout  # fold 1 is kept as it was
    assert re.search(r"fold 2 of 3\n.*\nresuming .* after epoch [12] of 3", resumed.stdout), resumed.stdout
    a, b = (torch.load(path, weights_only=True) for path in (tmp_path / "whole.pt", interrupted))
    assert a["val_predictions"] == b["val_predictions"] and a["folds"] == b["folds"] == 3
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key


def test_a_cross_validated_run_resumes_in_the_fold_it_stopped_in():
    from helpers.resume import folds_to_train
    mid_fold_2 = {"fold": 2, "training_state": {}}  # a checkpoint saved during fold 2
    fold_2_done = {"fold": 2}                        # fold 2's finished checkpoint
    assert folds_to_train(None, 1) == [(None, None)]
    assert folds_to_train(mid_fold_2, 1) == [(None, mid_fold_2)]  # no --folds: the one model carries on
    assert folds_to_train(None, 3) == [(1, None), (2, None), (3, None)]
    assert folds_to_train(mid_fold_2, 3) == [(2, mid_fold_2), (3, None)]
    assert folds_to_train(fold_2_done, 3) == [(3, None)]
    assert folds_to_train({"fold": 3}, 3) == []  # every fold done: only the joining into one checkpoint is left


def test_a_write_that_fails_keeps_the_previous_file_and_no_temporary(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("the previous file")

    def half_then_fail(tmp):
        Path(tmp).write_text("half a fi")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        save_atomically(path, half_then_fail)
    assert path.read_text() == "the previous file" and sorted(tmp_path.iterdir()) == [path]

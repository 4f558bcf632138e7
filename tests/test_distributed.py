"""torchrun: two CPU processes on 127.0.0.1 train one model, as one process would (both from a start,
train.py --init-from)."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import ROOT, run_script
from dataset import CustomDataset, build_transforms, read_split
from model import load_checkpoint, predict


def test_two_processes_write_one_checkpoint_that_matches_one_process(synthetic_data, trained_baseline, tmp_path):
    common = ["--data", synthetic_data, "--img-size", 32, "--epochs", 3, "--workers", 0, "--no-tta",
              "--init-from", trained_baseline[0]]
    # One process with batches of 32, and two with 16 each: the same images per step, the same steps.
    single = run_script("train.py", *common, "--batch-size", 32, "--out", tmp_path / "single" / "model.pt")
    assert single.returncode == 0, single.stderr
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
              "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", str(ROOT / "train.py")]
    out = tmp_path / "two" / "model.pt"
    both = subprocess.run([*launch, *map(str, common), "--batch-size", "16", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    assert both.returncode == 0, both.stderr
    assert "on cpu x 2 processes" in both.stdout
    assert both.stdout.count("epoch   1/3") == 1  # only rank 0 reports...
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [  # ...and writes, once
        "model-augmentations.png", "model-curves.png", "model-log.csv", "model-metadata.png", "model.pt"]

    one, two = (torch.load(tmp_path / run / "model.pt", weights_only=True) for run in ("single", "two"))
    # Validation was split between the processes and gathered back: every image once, in order...
    assert two["val_predictions"]["isic_id"] == one["val_predictions"]["isic_id"]
    assert two["val_predictions"]["label"] == one["val_predictions"]["label"]
    # ...each with the probability the saved model gives it when one process scores them all.
    model, info = load_checkpoint(tmp_path / "two" / "model.pt")
    val_set = CustomDataset(read_split(synthetic_data, "val"), build_transforms(32, False, info["mean"], info["std"]))
    probabilities, _ = predict(model, DataLoader(val_set, batch_size=64), "cpu")
    assert two["val_predictions"]["image_probability"] == pytest.approx(probabilities, abs=1e-5)
    # Not bit-identical to one process (batch norm sees 16 images, not 32; other augmentations), but close.
    assert abs(two["val_metrics"]["auc"] - one["val_metrics"]["auc"]) < 0.05, (two["val_metrics"], one["val_metrics"])
    assert two["start"] == one["start"] and two["start"]["file"] == str(trained_baseline[0])

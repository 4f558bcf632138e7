"""Make the skin start: one model that has already learnt benign from malignant on dermoscopy.

A clinic with a few hundred labels need not start from ImageNet's cats and cars. This command trains
the recommended architecture (EfficientNet-Lite0 at 128 px, from ImageNet) on HAM10000's labelled
images, less every lesion the project's benchmarks score or choose settings on, and writes a start
that `train.py --init-from starts/skin-lite0.pt` fine-tunes on the clinic's own images.

Which lesions (the rule, by lesion_id): benchmarks/quality.py deals HAM10000's lesions once, at
random (seed 2024), into a test pool (~1,500 images), a development pool (~1,500) and the rest. The
start learns from the rest alone (5,067 lesions, 6,687 images), so a figure measured on the test or
development pool, or on ISIC UDA, is about lesions it never saw. prepare_data.py splits the rest
80/10/10 by lesion; train.py trains on 80 % for a fixed 12 epochs and keeps the last.

Writes starts/skin-lite0.pt (the checkpoint, with the lesion and image ids it learnt from and its
licence inside), starts/skin-lite0-lesions.txt (the same lesion ids, one a line) and prints its
SHA-256. Resumable: run it again after Ctrl-C or a crash and it carries on where it stopped. Work
files go to starts/work/ (delete it to start afresh). About 40 minutes on a 2-core CPU.

  python starts/make_skin_start.py                        # reads ../shared/data/ham10000
  python starts/make_skin_start.py --ham /data/HAM10000   # a folder with HAM10000_metadata.csv
"""
import argparse
import hashlib
import subprocess
import sys
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.quality import ham_subset, lesion_pools  # noqa: E402
from model import read_checkpoint, save_checkpoint  # noqa: E402

HERE = ROOT / "starts"
LICENCE = ("Trained on HAM10000 (Tschandl, Rosendahl & Kittler, Scientific Data 5, 180161, 2018), "
           "CC BY-NC 4.0: these weights carry its terms (attribution, no commercial use).")
TRAINING = ["--model", "efficientnet_lite0", "--pretrained", "--img-size", "128", "--epochs", "12",
            "--patience", "0", "--seed", "0"]


def run(script, *args):
    """One of the project's steps, its output shown as it goes; stop if it fails. Run from the
    project's folder with relative paths, so that the checkpoint is the same wherever it is."""
    if subprocess.run([sys.executable, script, *map(str, args)], cwd=ROOT).returncode != 0:
        sys.exit(f"{script} failed; run this command again to carry on")


def train(data, work):
    """train.py on the prepared rest, carried on with --resume if an earlier run was interrupted."""
    checkpoint = work / "skin-lite0.pt"
    if not (ROOT / checkpoint).exists():
        run("train.py", "--data", data, *TRAINING, "--out", checkpoint)
    elif "training_state" in torch.load(ROOT / checkpoint, map_location="cpu", weights_only=True):
        run("train.py", "--resume", checkpoint)
    return ROOT / checkpoint


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham", type=Path, default=ROOT.parent / "shared" / "data" / "ham10000")
    args = parser.parse_args()
    if not (args.ham / "HAM10000_metadata.csv").exists():
        sys.exit(f"{args.ham / 'HAM10000_metadata.csv'} not found; pass --ham DIR (HAM10000's "
                 "folder: HAM10000_metadata.csv and images/)")
    meta, pools = lesion_pools(args.ham)
    rest = meta[meta["lesion_id"].isin(pools["rest"])]
    work, data = Path("starts/work"), Path("starts/work/data")  # relative to the project
    if not (ROOT / data / "labels.csv").exists():
        ham_subset(args.ham, rest, ROOT / work / "source")
        run("prepare_data.py", "--source", work / "source", "--out", data, "--val-fraction", "0.1",
            "--test-fraction", "0.1", "--seed", "0")
    checkpoint = read_checkpoint(train(data, work))
    lesions = sorted(rest["lesion_id"].unique())
    out = HERE / "skin-lite0.pt"
    save_checkpoint(out, checkpoint.pop("state_dict"), **checkpoint, licence=LICENCE,
                    lesions=lesions, images=sorted(rest["image_id"]))
    (HERE / "skin-lite0-lesions.txt").write_text("\n".join(lesions) + "\n")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"{out}: {len(lesions)} lesions, {len(rest)} images; SHA-256 {digest}\n{LICENCE}")


if __name__ == "__main__":
    main()

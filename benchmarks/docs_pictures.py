"""Redraw the pictures of docs/WALKTHROUGH.md from a real run on HAM10000.

A few-labels set-up like the results table's (seed 0), a little smaller: 384 training and 96
validation images, the whole lesion-disjoint test split. Trains the baseline with train.py, scores it
with evaluate.py, and copies the pictures they draw into docs/pictures, shrunk to a few hundred kB.

Usage (about two minutes on a 2-core CPU):
  python benchmarks/docs_pictures.py
"""
import argparse
from pathlib import Path

from PIL import Image

from quality import ROOT, SHARED, few_labels, run


def shrink(source, target, scale):
    """A smaller copy with a 256-colour palette: plenty for a figure, a fraction of the bytes."""
    image = Image.open(source).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    print(f"{target.relative_to(ROOT)}: {image.width}x{image.height}, {target.stat().st_size // 1024} kB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham", type=Path, default=SHARED / "ham10000")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "docs")
    args = parser.parse_args()

    run("prepare_data.py", "--source", args.ham, "--out", args.out / "full", "--seed", 0)
    few_labels(args.out / "full", args.out / "few", seed=0, train_per_class=192, val_per_class=48)
    checkpoint = args.out / "baseline.pt"
    print(run("train.py", "--data", args.out / "few", "--epochs", 30, "--out", checkpoint).splitlines()[-1])
    print(run("evaluate.py", checkpoint, "--out", args.out / "report").splitlines()[-1])

    pictures = ROOT / "docs" / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    for source, scale in ((args.out / "baseline-augmentations.png", 0.75), (args.out / "baseline-curves.png", 0.8),
                          (args.out / "report" / "roc.png", 0.8), (args.out / "report" / "confusion_matrix.png", 0.8),
                          (args.out / "report" / "grad_cam.png", 1.0)):
        shrink(source, pictures / source.name.replace("baseline-", ""), scale)


if __name__ == "__main__":
    main()

"""Redraw the pictures of docs/WALKTHROUGH.md from a real run on HAM10000.

A few-labels set-up like the results table's (seed 0), within the budget of fewer than 400 labels:
300 training and 80 validation images, half malignant; scored on the whole lesion-disjoint test split.
Trains the recommended model (EfficientNet-Lite0 from its ImageNet weights, train.py's defaults
otherwise) with train.py, scores it with evaluate.py, and
copies the pictures they draw into docs/pictures, shrunk to a few hundred kB. Prints the last lines of
each script's output, which docs/WALKTHROUGH.md quotes.

Usage (about ten minutes on a 2-core CPU):
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
    few_labels(args.out / "full", args.out / "few", seed=0, train_per_class=150, val_per_class=40)
    checkpoint = args.out / "lite0.pt"
    print("\n".join(run("train.py", "--data", args.out / "few", "--model", "efficientnet_lite0", "--pretrained",
                        "--out", checkpoint).splitlines()[-4:]))
    print("\n".join(run("evaluate.py", checkpoint, "--out", args.out / "report").splitlines()[-14:]))

    pictures = ROOT / "docs" / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    for source, scale in ((args.out / "lite0-augmentations.png", 0.75), (args.out / "lite0-curves.png", 0.8),
                          (args.out / "report" / "roc.png", 0.8), (args.out / "report" / "confusion_matrix.png", 0.8),
                          (args.out / "report" / "grad_cam.png", 1.0)):
        shrink(source, pictures / source.name.replace("lite0-", ""), scale)


if __name__ == "__main__":
    main()

"""Redraw the pictures of docs/WALKTHROUGH.md from the README's recommended recipe, under the budget.

The run behind them is seed 0 of benchmarks/quality.py's `budget-lite0-folds5-fixed`: the README's
command for a few hundred labels (EfficientNet-Lite0 from its ImageNet weights, --folds 5 --patience 0)
trained on its 340 labelled train and val images of HAM10000 (fewer than 400 in all), and scored on the
1,501 test-pool images of other lesions, the README's table's test pool. quality.py trains it if its
output folder does not hold it yet (about 50 minutes on a 2-core CPU) and reads it back if it does.
This script then scores it with evaluate.py again (the pictures evaluate.py draws now; about 10
minutes), draws fold 1's training curves from its log, and copies the pictures into docs/pictures,
shrunk to a few hundred kB. Prints the evaluation's report, which docs/WALKTHROUGH.md quotes.

Usage:
  python benchmarks/docs_pictures.py
"""
import argparse
import json
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from quality import ROOT, run

sys.path.insert(0, str(ROOT))
from helpers.charts import draw_curves  # noqa: E402

RECIPE, SEED = "budget-lite0-folds5-fixed", 0


def shrink(source, target, scale):
    """A smaller copy with a 256-colour palette: plenty for a figure, a fraction of the bytes."""
    image = Image.open(source).convert("RGB")
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)
    print(f"{target.relative_to(ROOT)}: {image.width}x{image.height}, {target.stat().st_size // 1024} kB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quality", type=Path, default=ROOT / "benchmarks" / "out" / "quality",
                        help="benchmarks/quality.py's output folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "docs")
    args = parser.parse_args()

    run("benchmarks/quality.py", "--recipes", RECIPE, "--seeds", SEED, "--out", args.quality)
    budget = args.quality / f"budget-{SEED}"
    checkpoint = Path(json.loads((budget / f"{RECIPE}-test" / "metrics.json").read_text())["checkpoints"][0])
    report = args.out / "report"
    print(run("evaluate.py", checkpoint, "--data", args.quality / "ham-test", "--split", "test", "--out", report))

    # Fold 1's curves, drawn as train.py draws them (patience 0: the last epoch is the one kept).
    history = pd.read_csv(checkpoint.with_name(f"{checkpoint.stem}-fold1-log.csv")).to_dict("records")
    curves = args.out / "curves.png"
    args.out.mkdir(parents=True, exist_ok=True)
    draw_curves(history, history[-1]["epoch"], curves)

    pictures = ROOT / "docs" / "pictures"
    pictures.mkdir(parents=True, exist_ok=True)
    for source, scale in ((checkpoint.with_name(f"{checkpoint.stem}-augmentations.png"), 0.75), (curves, 0.8),
                          (checkpoint.with_name(f"{checkpoint.stem}-metadata.png"), 1.0),
                          (report / "roc.png", 0.8), (report / "confusion_matrix.png", 0.8),
                          (report / "grad_cam.png", 1.0)):
        shrink(source, pictures / source.name.replace(f"{checkpoint.stem}-", ""), scale)


if __name__ == "__main__":
    main()

"""How firmly the late fusion's metadata weights are held at zero: chosen on the development lesions.

chapters/metadata.py's LateFusion learns its metadata weights on every labelled image of the budget (340
train and val images), each weight pulled towards 0 with a strength (FUSION_STRENGTH). This refits the
fusion of models that benchmarks/quality.py has trained and scored, at several strengths, and scores each
on the HAM10000 development pool, from the image-alone probabilities that evaluate.py wrote beside the
fused ones: nothing is trained or scored again.

Usage (seconds, after `python benchmarks/quality.py --recipes budget-lite0 budget-lite0-folds5-fixed`):
  python benchmarks/fusion_strength.py --recipes budget-lite0 budget-lite0-folds5-fixed
"""
import argparse
import statistics
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chapters.metadata import FUSION_STRENGTH, fit_late_fusion, fused_probabilities  # noqa: E402
from train import roc_auc  # noqa: E402
from dataset import read_labels  # noqa: E402
from model import read_checkpoint  # noqa: E402

STRENGTHS = (0.1, 0.3, 1, 3, 10, 30, 100, 1e6)  # 1e6: the metadata held at zero, the image model alone


def refitted_auc(data, recipe, strength, pool="dev"):
    """Dev AUC of the recipe's model in this budget folder, its fusion refitted at this strength."""
    log = next(data.glob(f"{recipe}-{pool}/metrics.json"), None)
    if log is None:
        return None
    checkpoint_path = Path(pd.read_json(log, typ="series")["checkpoints"][0])
    fusion, _ = fit_late_fusion(read_checkpoint(checkpoint_path), read_labels(data), strength)  # from the image alone
    predictions = pd.read_csv(data / f"{recipe}-{pool}" / "predictions.csv")
    scored = read_labels(ROOT / "benchmarks" / "out" / "quality" / f"ham-{pool}").set_index("isic_id")
    table = scored.loc[predictions["isic_id"]].reset_index()
    fused = fused_probabilities(fusion, predictions["probability_image_alone"].tolist(), table)
    return roc_auc(predictions["label"].tolist(), fused)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    parser.add_argument("--recipes", nargs="+", default=["budget-lite0", "budget-lite0-folds5-fixed"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    print(f"dev AUC by the strength that holds the metadata weights (the default: {FUSION_STRENGTH:g}); "
          "mean ± sd over seeds\n")
    print("| recipe | " + " | ".join("image alone" if s == 1e6 else f"{s:g}" for s in STRENGTHS) + " |")
    print("|---" * (len(STRENGTHS) + 1) + "|")
    for recipe in args.recipes:
        cells = []
        for strength in STRENGTHS:
            aucs = [refitted_auc(args.out / f"budget-{seed}", recipe, strength) for seed in args.seeds]
            aucs = [auc for auc in aucs if auc is not None]
            sd = statistics.stdev(aucs) if len(aucs) > 1 else 0
            cells.append(f"{statistics.mean(aucs):.3f} ± {sd:.3f} ({len(aucs)})" if aucs else "-")
        print(f"| {recipe} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

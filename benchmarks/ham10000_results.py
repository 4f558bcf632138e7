"""The README's results table: baseline and ResNet-18 trained on 384 real HAM10000 images.

The few-hundred-labels use case, measured honestly:
  1. prepare_data.py splits all of ../shared/data/ham10000 by lesion (70/15/15, one seed);
  2. from the train side keep 384 images (192 per class), from the val side 96 (48 per class);
  3. train.py trains each model with its defaults (128 px) for up to --epochs: the baseline CNN and
     ResNet-18 from scratch, EfficientNet-Lite0 from its ImageNet weights;
  4. evaluate.py scores the whole lesion-disjoint test split (about 1,450 images, ~17 % malignant),
     and, for how well the model travels, the 557 ISIC UDA images of another collection (--test-only).
Every step is the project's own script, run as a user would; the table is mean ± std over seeds.

Usage (about 7 minutes a seed on a 2-core CPU):
  python benchmarks/ham10000_results.py
  python benchmarks/ham10000_results.py --seeds 0 1 2 --epochs 30 --models baseline lite0-pretrained
"""
import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
# The models compared, as train.py options.
MODELS = {"baseline": ["--model", "baseline"], "resnet": ["--model", "resnet"],
          "lite0-pretrained": ["--model", "efficientnet_lite0", "--pretrained"]}


def run(script, *args, log=None):
    """Run one of the five scripts (its output kept in `log`); stop with its output if it fails."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True)
    if log:
        Path(log).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def few_labels(full, out, seed, train_per_class=192, val_per_class=48):
    """Keep a class-balanced few hundred train/val images and the whole test split."""
    table = pd.read_csv(full / "labels.csv")
    keep = [table[table["split"] == "test"]]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in (0, 1):
            rows = table[(table["split"] == split) & (table["label"] == label)]
            keep.append(rows.sample(n=per_class, random_state=seed))
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(keep).to_csv(out / "labels.csv", index=False)  # image paths are absolute: nothing to copy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham", type=Path, default=SHARED / "ham10000")
    parser.add_argument("--uda", type=Path, default=SHARED / "isic_uda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "ham10000")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    if not args.ham.exists():
        sys.exit(f"HAM10000 not found at {args.ham}; pass --ham DIR")

    run("prepare_data.py", "--source", args.uda, "--out", args.out / "uda", "--test-only")
    results = []
    for seed in args.seeds:
        run("prepare_data.py", "--source", args.ham, "--out", args.out / f"full-{seed}", "--seed", seed)
        data = args.out / f"seed-{seed}"
        few_labels(args.out / f"full-{seed}", data, seed)
        for model in args.models:
            started = time.time()
            run("train.py", "--data", data, *MODELS[model], "--epochs", args.epochs, "--seed", seed,
                "--out", data / f"{model}.pt", log=data / f"{model}-train.log")
            minutes = (time.time() - started) / 60
            row = {"model": model, "seed": seed, "train minutes": minutes}
            for name, folder in (("HAM", data), ("UDA", args.out / "uda")):
                report = data / f"{model}-{name}"
                run("evaluate.py", data / f"{model}.pt", "--data", folder, "--out", report)
                metrics = json.loads((report / "metrics.json").read_text())
                row.update({f"{name} {key}": metrics[key] for key in
                            ("auc", "balanced_accuracy", "recall", "specificity", "pauc_80", "n")})
            results.append(row)
            print(f"seed {seed} {model:8s} HAM AUC {row['HAM auc']:.3f}  UDA AUC {row['UDA auc']:.3f}  "
                  f"({minutes:.1f} min)", flush=True)

    table = pd.DataFrame(results)
    table.to_csv(args.out / "results.csv", index=False)
    print(f"\n{len(args.seeds)} seeds, mean ± std; HAM10000 test n = {int(table['HAM n'].iloc[0])}, "
          f"ISIC UDA n = {int(table['UDA n'].iloc[0])}\n")
    columns = {"HAM auc": "AUC", "HAM balanced_accuracy": "balanced acc.", "HAM recall": "sensitivity",
               "HAM specificity": "specificity", "HAM pauc_80": "pAUC>80%TPR", "UDA auc": "UDA AUC",
               "UDA balanced_accuracy": "UDA balanced acc.", "train minutes": "train min."}
    print("| model | " + " | ".join(columns.values()) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for model, rows in table.groupby("model", sort=False):
        cells = [f"{rows[c].mean():.3f} ± {statistics.stdev(rows[c]) if len(rows) > 1 else 0:.3f}"
                 if c != "train minutes" else f"{rows[c].mean():.1f}" for c in columns]
        print(f"| {model} | " + " | ".join(cells) + " |")

if __name__ == "__main__":
    main()

"""Model quality with a few hundred labels: real HAM10000 for training, two collections for testing.

The use case this project is about, measured honestly, every step the project's own script run as a
user would run it:
  1. prepare_data.py splits all of ../shared/data/ham10000 by lesion (70/15/15; a new split per seed);
  2. from the train side keep 400 images (200 per class), from the val side 100 (50 per class):
     the only labels a recipe may learn from or choose its epoch and threshold on;
  3. train.py trains each recipe below (a recipe is a list of train.py options);
  4. evaluate.py scores
       val   the whole lesion-grouped val split (~1,450 images): what recipes and hyperparameters are
             chosen on (benchmarks/search.py), never the test split;
       test  the whole lesion-disjoint test split (~1,450 images, ~17 % malignant, as in the clinic);
       UDA   the 557 ISIC UDA images of another collection (other clinics and cameras, melanoma vs
             nevus): how well the model travels. Only ever measured, never tuned on.
Prints a table of mean ± std over seeds, and writes every run's numbers to OUT/results.csv. A run
already scored in OUT (an interrupted benchmark, or a recipe shared with search.py) is read back, not
trained again: delete OUT to start afresh.

Usage (a 2-core CPU: about 3 minutes per recipe and seed at 128 px, about 8 at 224 px):
  python benchmarks/quality.py                                       # the README's table
  python benchmarks/quality.py --recipes default lite0-plain --seeds 0 1 2
"""
import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
LITE0 = ["--model", "efficientnet_lite0", "--pretrained"]
PROBE = [*LITE0, "--freeze-backbone", "--lr", "3e-3", "--epochs", "100", "--patience", "20"]
# The recipes compared: which labels they learn from ("few": 400 + 100 images; "all": every train and
# val image of the split, ~6,800 + ~1,450), their train.py options (train.py's defaults fill in the
# rest) and how many models (other seeds, same data) evaluate.py averages.
RECIPES = {
    "baseline": ("few", ["--model", "baseline"], 1),
    "resnet-scratch": ("few", ["--model", "resnet"], 1),
    "lite0-probe": ("few", PROBE, 1),
    "lite0-plain": ("few", LITE0, 1),
    "lite0-recipe": ("few", LITE0, 1),
    "lite0-recipe-x3": ("few", LITE0, 3),
    "lite0-probe-all": ("all", PROBE, 1),
}
SPLITS = ("val", "test", "UDA")


def run(script, *args, log=None):
    """Run one of the five scripts (its output kept in `log`); stop with its output if it fails."""
    result = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True)
    if log:
        Path(log).write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(f"{script} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return result.stdout


def few_labels(full, out, seed, train_per_class=200, val_per_class=50):
    """Keep a class-balanced few hundred train/val images, and the whole val and test splits to score on."""
    table = pd.read_csv(full / "labels.csv")
    keep = [table[table["split"] == "test"]]
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for label in (0, 1):
            rows = table[(table["split"] == split) & (table["label"] == label)]
            keep.append(rows.sample(n=per_class, random_state=seed))
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(keep).to_csv(out / "labels.csv", index=False)  # image paths are absolute: nothing to copy


def prepare(ham, uda, out, seed):
    """The folders one seed needs: {split name: (data folder, split)}. Prepared once, then reused."""
    if not (out / "uda" / "labels.csv").exists():
        run("prepare_data.py", "--source", uda, "--out", out / "uda", "--test-only")
    full, data = out / f"full-{seed}", out / f"seed-{seed}"
    if not (data / "labels.csv").exists():
        run("prepare_data.py", "--source", ham, "--out", full, "--seed", seed)
        few_labels(full, data, seed)
    return data, {"val": (full, "val"), "test": (data, "test"), "UDA": (out / "uda", "test")}


def trained(options, data, seed, epochs):
    """A checkpoint of train.py with these options on this data and seed, and the minutes it took. Named
    by its options, so a model shared by two recipes (or by search.py) is trained once."""
    key = hashlib.sha1(repr([str(data), epochs, seed, *options]).encode()).hexdigest()[:10]
    checkpoint, done = data / f"model-{key}.pt", data / f"model-{key}.minutes"
    if not done.exists():
        started = time.time()
        run("train.py", "--data", data, "--epochs", epochs, *options, "--seed", seed, "--out", checkpoint,
            log=data / f"model-{key}-train.log")
        done.write_text(str((time.time() - started) / 60))
    return checkpoint, float(done.read_text())


def train_and_score(name, options, data, scored_on, seed, epochs, splits=SPLITS, members=1):
    """Train one recipe on one seed's data (with members > 1, that many models with other seeds, averaged
    by evaluate.py); its metrics on each split, and the minutes its training took."""
    saved = data / f"{name}-row.json"
    if saved.exists():  # scored by an earlier run: delete OUT (or this file) to train it again
        return json.loads(saved.read_text())
    models = [trained(options, data, seed + 100 * member, epochs) for member in range(members)]
    row = {"recipe": name, "seed": seed, "train minutes": sum(minutes for _, minutes in models)}
    for split in splits:
        folder, split_name = scored_on[split]
        report = data / f"{name}-{split}"
        run("evaluate.py", *(checkpoint for checkpoint, _ in models), "--data", folder, "--split", split_name,
            "--out", report)
        metrics = json.loads((report / "metrics.json").read_text())
        positives = metrics["confusion_matrix"][1][0] + metrics["confusion_matrix"][1][1]
        row.update({f"{split} {key}": metrics[key] for key in
                    ("auc", "balanced_accuracy", "recall", "specificity", "pauc_80", "accuracy", "n")})
        row[f"{split} majority accuracy"] = 1 - positives / metrics["n"]  # calling everything benign
    saved.write_text(json.dumps(row))
    return row


def mean_std(values):
    return f"{values.mean():.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def print_table(table, columns):
    """A Markdown table of mean ± std over seeds, one row per recipe."""
    print("| recipe | " + " | ".join(columns.values()) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for recipe, rows in table.groupby("recipe", sort=False):
        cells = [f"{rows[c].mean():.1f}" if c == "train minutes" else mean_std(rows[c]) for c in columns]
        print(f"| {recipe} | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham", type=Path, default=SHARED / "ham10000")
    parser.add_argument("--uda", type=Path, default=SHARED / "isic_uda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    for folder in (args.ham, args.uda):
        if not folder.exists():
            sys.exit(f"{folder} not found; pass --ham DIR and --uda DIR")

    results = []
    for seed in args.seeds:
        data, scored_on = prepare(args.ham, args.uda, args.out, seed)
        for name in args.recipes:
            regime, options, members = RECIPES[name]
            if regime == "few":
                row = train_and_score(name, options, data, scored_on, seed, args.epochs, members=members)
            else:  # trained on the whole split, so its val images are not unseen: scored on test and UDA only
                row = train_and_score(name, options, scored_on["val"][0], scored_on, seed, args.epochs,
                                      splits=("test", "UDA"), members=members)
                row["val auc"] = float("nan")
            results.append(row)
            print(f"seed {seed} {name:16s} val AUC {row['val auc']:.3f}  test AUC {row['test auc']:.3f}  "
                  f"UDA AUC {row['UDA auc']:.3f}  ({row['train minutes']:.1f} min)", flush=True)
    table = pd.DataFrame(results)
    table.to_csv(args.out / "results.csv", index=False)

    print(f"\n{len(args.seeds)} seeds, mean ± std. HAM10000 test: n = {int(table['test n'].iloc[0])}, "
          f"accuracy of calling everything benign {table['test majority accuracy'].mean():.3f}; "
          f"ISIC UDA: n = {int(table['UDA n'].iloc[0])}, {table['UDA majority accuracy'].mean():.3f}\n")
    print_table(table, {"test auc": "AUC", "test balanced_accuracy": "balanced acc.", "test recall": "sensitivity",
                        "test specificity": "specificity", "test pauc_80": "pAUC>80%", "test accuracy": "accuracy",
                        "train minutes": "train min."})
    print("\nISIC UDA (another collection), at the same threshold:\n")
    print_table(table, {"UDA auc": "AUC", "UDA balanced_accuracy": "balanced acc.", "UDA recall": "sensitivity",
                        "UDA specificity": "specificity", "val auc": "HAM val AUC"})


if __name__ == "__main__":
    main()

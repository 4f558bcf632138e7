"""Model quality with a few hundred labels: real HAM10000 for training, two collections for testing.

The use case this project is about, measured honestly, every step the project's own script run as a
user would run it:
  1. prepare_data.py splits all of ../shared/data/ham10000 by lesion (70/15/15; a new split per seed);
  2. from the train side keep 400 images (200 per class), from the val side 100 (50 per class):
     the only labels a recipe may learn from or choose its epoch and threshold on;
  3. train.py trains each recipe below (a recipe is a list of train.py options);
  4. evaluate.py scores
       test  the whole lesion-disjoint test split (~1,450 images, ~17 % malignant, as in the clinic);
       UDA   the 557 ISIC UDA images of another collection (other clinics and cameras, melanoma vs
             nevus): how well the model travels. Only ever measured, never tuned on.
     (benchmarks/search.py scores the whole lesion-grouped val split too: recipes are chosen on that.)
Prints a table of mean ± std over seeds, and writes every run's numbers to OUT/results.csv. A run
already scored in OUT (an interrupted benchmark, or a recipe shared with search.py) is read back, not
trained again: delete OUT to start afresh.

Usage (a 2-core CPU: about 30 minutes per seed for all recipes; Lite0 fine-tunes at about 20 images/s):
  python benchmarks/quality.py                                       # the README's table
  python benchmarks/quality.py --recipes lite0-recipe lite0-plain --seeds 0 1 2
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
sys.path.insert(0, str(ROOT))
from evaluate import pick_threshold, threshold_metrics  # noqa: E402
from model import read_checkpoint  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LITE0 = ["--model", "efficientnet_lite0", "--pretrained"]
# The pretrained model with the options train.py had before the recipe search (spelled out, so that this
# row means the same thing whatever train.py's defaults become).
PLAIN = [*LITE0, "--lr", "3e-4", "--img-size", "128", "--augment", "light", "--patience", "5", "--no-tta"]
PROBE = [*LITE0, "--freeze-backbone", "--lr", "3e-3", "--epochs", "100", "--patience", "20"]
# The recipes compared: which labels they learn from ("few": 400 + 100 images; "all": every train and
# val image of the split, ~6,800 + ~1,450), their train.py options (train.py's defaults fill in the
# rest) and how many models (other seeds, same data) evaluate.py averages.
RECIPES = {
    "baseline": ("few", ["--model", "baseline"], 1),
    "lite0-plain": ("few", PLAIN, 1),
    "lite0-recipe": ("few", LITE0, 1),  # train.py's defaults, as chosen by benchmarks/search.py
    "lite0-probe": ("few", PROBE, 1),
    "lite0-probe-all": ("all", PROBE, 1),
    "lite0-recipe-x3": ("few", LITE0, 3),
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
    # The screening operating point: the threshold that caught 90 % of the validation melanomas, as
    # `evaluate.py --target-sensitivity 0.9` would choose it, applied to each split's predictions.
    paths = [str(checkpoint) for checkpoint, _ in models]
    screening = pick_threshold([read_checkpoint(path) for path in paths], paths, target_sensitivity=0.9)
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
        predictions = pd.read_csv(report / "predictions.csv")
        at_screening = threshold_metrics(predictions["label"].tolist(), predictions["probability_malignant"].tolist(),
                                         screening)
        row[f"{split} screening sensitivity"] = at_screening["recall"]
        row[f"{split} screening specificity"] = at_screening["specificity"]
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


def benchmark_parser(doc):
    """The options this benchmark and search.py share: where the data is, where outputs go, how long to train."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham", type=Path, default=SHARED / "ham10000")
    parser.add_argument("--uda", type=Path, default=SHARED / "isic_uda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    parser.add_argument("--epochs", type=int, default=30)
    return parser


def parse_with_data(parser):
    """The parsed arguments, once both collections are known to be there."""
    args = parser.parse_args()
    for folder in (args.ham, args.uda):
        if not folder.exists():
            sys.exit(f"{folder} not found; pass --ham DIR and --uda DIR")
    return args


def main():
    parser = benchmark_parser(__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    args = parse_with_data(parser)

    results = []
    prepared = {seed: prepare(args.ham, args.uda, args.out, seed) for seed in args.seeds}
    for name in args.recipes:  # every seed of a recipe before the next recipe: a cut-short run is still useful
        for seed, (data, scored_on) in prepared.items():
            regime, options, members = RECIPES[name]
            # "all" trains on every train and val image of the split; the recipes are compared on the
            # test split and UDA (the val split is what search.py chooses on).
            trained_on = data if regime == "few" else scored_on["val"][0]
            row = train_and_score(name, options, trained_on, scored_on, seed, args.epochs, ("test", "UDA"), members)
            results.append(row)
            print(f"seed {seed} {name:16s} test AUC {row['test auc']:.3f}  UDA AUC {row['UDA auc']:.3f}  "
                  f"({row['train minutes']:.1f} min)", flush=True)
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
                        "UDA specificity": "specificity", "UDA pauc_80": "pAUC>80%"})
    print("\nThe screening threshold (90 % sensitivity on the validation images), on each test set:\n")
    print_table(table, {"test screening sensitivity": "HAM sensitivity",
                        "test screening specificity": "HAM specificity",
                        "UDA screening sensitivity": "UDA sensitivity", "UDA screening specificity": "UDA specificity"})


if __name__ == "__main__":
    main()

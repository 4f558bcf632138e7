"""Model quality with a few hundred labels: real HAM10000 for training, two collections for testing.

Two set-ups. "budget" is the seed's own: fewer than 400 labelled images in all, prepared by the user's
own flow (docs/RESULTS.md, "The budget"):
  1. HAM10000's lesions are dealt once into three disjoint pools: ~1,500 test images, ~1,500
     development images (recipes may be chosen on these), and the rest, from which each seed draws
     whole lesions until it has up to 200 images of each class: the user's 400 labelled images, in a
     folder with their metadata CSV;
  2. prepare_data.py splits those 400 itself (70/15/15 by lesion); train.py trains on them;
  3. evaluate.py scores the test and development pools (--test-only) and ISIC UDA.
"budget-distinct" is the same with one image of each lesion drawn: 400 lesions instead of about 285.
"few" and "all" are more generous: the older set-up below.

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
Where the data has metadata (HAM10000's age, sex and site; ISIC UDA's age and sex), train.py fits its
late fusion and evaluate.py reports the AUC of the images alone beside the fused one, from the same
models: each row has both. Prints a table of mean ± std over seeds, and writes every run's numbers to
OUT/results.csv. A run
already scored in OUT (an interrupted benchmark, or a recipe shared with search.py) is read back, not
trained again: delete OUT to start afresh.

Usage (a 2-core CPU: about 7 minutes per seed and budget recipe at 128 px, most of it scoring):
  python benchmarks/quality.py --recipes budget-lite0 budget-lite0-folds5-fixed budget-distinct-lite0-fixed  # README
  python benchmarks/quality.py --recipes baseline lite0-plain lite0-recipe --seeds 0 1 2
"""
import argparse
import hashlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from evaluate import choose_threshold, threshold_metrics  # noqa: E402
from evaluate import pick_threshold  # noqa: E402
from model import read_checkpoint  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
LITE0 = ["--model", "efficientnet_lite0", "--pretrained"]
# The pretrained model with the options train.py had before the recipe search (spelled out, so that this
# row means the same thing whatever train.py's defaults become).
PLAIN = [*LITE0, "--lr", "3e-4", "--img-size", "128", "--patience", "5", "--no-tta"]
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
    "budget-baseline": ("budget", ["--model", "baseline"], 1),
    "budget-lite0": ("budget", LITE0, 1),
    "budget-lite0-x3": ("budget", LITE0, 3),
    "budget-lite0-224": ("budget", [*LITE0, "--img-size", "224"], 1),
    "budget-lite0-folds5": ("budget", [*LITE0, "--folds", "5"], 1),
    # On a GPU, where --precision auto means bfloat16: what float32 would give instead (on a CPU both are fp32).
    "budget-lite0-fp32": ("budget", [*LITE0, "--precision", "fp32"], 1),
    # The same 400 labels spent on 400 different lesions, one image each: what a user who chooses what to label gets.
    "budget-distinct-lite0": ("budget-distinct", LITE0, 1),
    # A fixed schedule: every epoch trained, the last kept, instead of the best on 60 validation images.
    "budget-lite0-fixed": ("budget", [*LITE0, "--patience", "0"], 1),
    "budget-distinct-lite0-fixed": ("budget-distinct", [*LITE0, "--patience", "0"], 1),
    "budget-lite0-folds5-fixed": ("budget", [*LITE0, "--folds", "5", "--patience", "0"], 1),
}
SPLITS = ("val", "test", "UDA")
BUDGET_SPLITS = ("dev", "test", "UDA")
POOL_IMAGES = 1500  # images in each of the test and development pools of the budget set-up
CLINIC_IMAGES = (20, 50)  # labelled images of a new clinic that choose its threshold again


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


def ham_subset(ham, rows, folder, metadata_name="HAM10000_metadata.csv"):
    """A folder in the layout of `ham` (a metadata CSV and images/; HAM10000's by default, ISIC UDA's with
    metadata_name="metadata.csv") holding only these metadata rows (the images are linked, not copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows.to_csv(folder / metadata_name, index=False)
    if not (folder / "images").exists():
        os.symlink((ham / "images").resolve(), folder / "images")
    return folder


def lesion_pools(ham):
    """HAM10000's usable rows and its lesions dealt once, at random, into test, development and the rest."""
    meta = pd.read_csv(ham / "HAM10000_metadata.csv", dtype=str)
    meta = meta[meta["dx"].isin(["mel", "bcc", "nv", "bkl", "df", "vasc"])]  # prepare_data's labels; akiec out
    meta = meta[[(ham / "images" / f"{i}.jpg").exists() for i in meta["image_id"]]]
    lesions = sorted(meta["lesion_id"].unique())
    random.Random(2024).shuffle(lesions)
    sizes = meta.groupby("lesion_id").size()
    pools, filled = {"test": [], "dev": [], "rest": []}, 0
    for lesion in lesions:
        pool = "test" if filled < POOL_IMAGES else "dev" if filled < 2 * POOL_IMAGES else "rest"
        pools[pool].append(lesion)
        filled += sizes[lesion]
    return meta, pools


def prepare_budget(ham, uda, out, seed, one_per_lesion=False):
    """The budget set-up's folders for one seed: (data folder, {split name: (data folder, split)}). With
    one_per_lesion, a single image of each lesion drawn (at random), so that the 400 are 400 lesions."""
    meta, pools = lesion_pools(ham)
    scored_on = {"UDA": (out / "uda", "test")}
    if not (out / "uda" / "labels.csv").exists():
        run("prepare_data.py", "--source", uda, "--out", out / "uda", "--test-only")
    for pool in ("test", "dev"):
        folder = out / f"ham-{pool}"
        if not (folder / "labels.csv").exists():
            source = ham_subset(ham, meta[meta["lesion_id"].isin(pools[pool])], out / f"ham-{pool}-source")
            run("prepare_data.py", "--source", source, "--out", folder, "--test-only")
        scored_on[pool] = (folder, "test")
    data = out / f"budget-{seed}{'-distinct' if one_per_lesion else ''}"
    if not (data / "labels.csv").exists():
        # Whole lesions, drawn at random, until each class has up to 200 images.
        rest = meta[meta["lesion_id"].isin(pools["rest"])]
        if one_per_lesion:
            rest = rest.sample(frac=1, random_state=seed).drop_duplicates("lesion_id")
        malignant = rest.groupby("lesion_id")["dx"].agg(lambda dx: bool(set(dx) & {"mel", "bcc"}))
        sizes, chosen, count = rest.groupby("lesion_id").size(), [], {True: 0, False: 0}
        lesions = sorted(malignant.index)
        random.Random(seed).shuffle(lesions)
        for lesion in lesions:
            if count[malignant[lesion]] + sizes[lesion] <= 200:
                chosen.append(lesion)
                count[malignant[lesion]] += sizes[lesion]
        source = ham_subset(ham, rest[rest["lesion_id"].isin(chosen)], Path(f"{data}-source"))
        run("prepare_data.py", "--source", source, "--out", data, "--seed", seed)
    return data, scored_on


def trained(options, data, seed, epochs):
    """A checkpoint of train.py with these options on this data and seed, and the minutes it took. Named
    by its options, so a model shared by two recipes (or by search.py) is trained once."""
    key = hashlib.sha1(repr([str(data), epochs, seed, *options]).encode()).hexdigest()[:10]
    checkpoint, done = data / f"model-{key}.pt", data / f"model-{key}.minutes"
    if not done.exists():
        started = time.time()
        run("train.py", "--data", data, *(["--epochs", epochs] if epochs else []), *options, "--seed", seed,
            "--out", checkpoint, log=data / f"model-{key}-train.log")
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
        row[f"{split} auc image alone"] = metrics.get("auc_image_alone", metrics["auc"])  # without the metadata
        row[f"{split} majority accuracy"] = 1 - positives / metrics["n"]  # calling everything benign
        predictions = pd.read_csv(report / "predictions.csv")
        at_screening = threshold_metrics(predictions["label"].tolist(), predictions["probability_malignant"].tolist(),
                                         screening)
        row[f"{split} screening sensitivity"] = at_screening["recall"]
        row[f"{split} screening specificity"] = at_screening["specificity"]
    saved.write_text(json.dumps(row))
    return row


def rechosen_threshold(report, count, draws=20):
    """A new clinic's own operating point (evaluate.py --threshold-from): the threshold chosen again on `count`
    of the collection's labelled images (best balanced accuracy, and 90 % sensitivity for screening), the
    metrics measured on the rest; the mean over `draws` random draws, and how far the sensitivity of one
    draw, which is all one clinic gets, strays from it (the standard deviation between draws)."""
    predictions = pd.read_csv(report / "predictions.csv")
    found = {}
    for kind, target in (("", None), ("screening ", 0.9)):
        metrics = []
        for draw in range(draws):
            chosen = predictions.sample(n=count, random_state=draw)
            rest = predictions.drop(chosen.index)
            threshold = choose_threshold(chosen["label"].tolist(), chosen["probability_malignant"].tolist(), target)
            metrics.append(threshold_metrics(rest["label"].tolist(), rest["probability_malignant"].tolist(),
                                             threshold))
        found.update({f"UDA rechosen on {count} {kind}{key}": statistics.mean(m[key] for m in metrics)
                      for key in ("balanced_accuracy", "recall", "specificity")})
        found[f"UDA rechosen on {count} {kind}recall sd"] = statistics.stdev(m["recall"] for m in metrics)
    return found


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
    parser.add_argument("--epochs", type=int, default=None, help="train.py's --epochs (default: train.py's own)")
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
    for name in args.recipes:  # every seed of a recipe before the next recipe: a cut-short run is still useful
        regime, options, members = RECIPES[name]
        for seed in args.seeds:
            if regime.startswith("budget"):  # train.py's own defaults, as the user runs it
                data, scored_on = prepare_budget(args.ham, args.uda, args.out, seed, regime == "budget-distinct")
                row = train_and_score(name, options, data, scored_on, seed, args.epochs, BUDGET_SPLITS, members)
                for count in CLINIC_IMAGES:
                    row.update(rechosen_threshold(data / f"{name}-UDA", count))
            else:
                # "all" trains on every train and val image of the split; the recipes are compared on the
                # test split and UDA (the val split is what search.py chooses on).
                data, scored_on = prepare(args.ham, args.uda, args.out, seed)
                trained_on = data if regime == "few" else scored_on["val"][0]
                row = train_and_score(name, options, trained_on, scored_on, seed, args.epochs or 30, ("test", "UDA"),
                                      members)
            results.append({**row, "regime": regime})
            print(f"seed {seed} {name:16s} test AUC {row['test auc']:.3f}  UDA AUC {row['UDA auc']:.3f}  "
                  f"({row['train minutes']:.1f} min)", flush=True)
    table = pd.DataFrame(results)
    table.to_csv(args.out / "results.csv", index=False)
    for regime, rows in table.groupby("regime", sort=False):
        print_report(regime, rows, len(args.seeds))


def print_report(regime, table, seeds):
    """The tables of docs/RESULTS.md for one set-up: HAM10000 test, development (budget), UDA, screening."""
    print(f"\n## {regime}: {seeds} seeds, mean ± std. HAM10000 test: n = {int(table['test n'].iloc[0])}, "
          f"accuracy of calling everything benign {table['test majority accuracy'].mean():.3f}; "
          f"ISIC UDA: n = {int(table['UDA n'].iloc[0])}, {table['UDA majority accuracy'].mean():.3f}\n")
    columns = {"auc": "AUC", "balanced_accuracy": "balanced acc.", "recall": "sensitivity",
               "specificity": "specificity", "pauc_80": "pAUC>80%", "accuracy": "accuracy"}
    print_table(table, {**{f"test {key}": name for key, name in columns.items()}, "train minutes": "train min."})
    if regime.startswith("budget"):
        print("\nHAM10000 development lesions (recipes may be chosen on these), at the same threshold:\n")
        print_table(table, {f"dev {key}": name for key, name in columns.items()})
    print("\nAUC with the metadata (late fusion) and from the images alone (the same models):\n")
    print_table(table, {f"{split} {key}": f"{split} {name}" for split in ("dev", "test", "UDA") if f"{split} auc" in table
                        for key, name in (("auc", "AUC"), ("auc image alone", "images alone"))})
    print("\nISIC UDA (another collection), at the same threshold:\n")
    print_table(table, {f"UDA {key}": name for key, name in columns.items() if key != "accuracy"})
    clinic = {"balanced_accuracy": "balanced acc.", "recall": "sensitivity", "specificity": "specificity",
              "recall sd": "sensitivity sd between draws"}
    for count in CLINIC_IMAGES if regime.startswith("budget") else ():
        print(f"\nISIC UDA with its own thresholds, chosen on {count} of its labelled images (evaluate.py "
              f"--threshold-from), measured on the other {int(table['UDA n'].iloc[0]) - count} (mean of 20 draws):\n")
        print_table(table, {f"UDA rechosen on {count} {kind}{key}": f"{kind}{name}" for kind in ("", "screening ")
                            for key, name in clinic.items()})
    print("\nThe screening threshold (90 % sensitivity on the validation images), on each test set:\n")
    print_table(table, {"test screening sensitivity": "HAM sensitivity",
                        "test screening specificity": "HAM specificity",
                        "UDA screening sensitivity": "UDA sensitivity", "UDA screening specificity": "UDA specificity"})


if __name__ == "__main__":
    main()

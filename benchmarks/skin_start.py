"""A start that knows skin (train.py --init-from starts/skin-lite0.pt) against ImageNet's, measured
where it matters: a clinic's own few hundred labels, scored on the rest of that clinic's images.

Two parts, each the user's own flow (prepare_data.py on the labelled images, train.py, evaluate.py):

  --choose   the fine-tuning's settings, chosen on HAM10000 alone. The skin start learnt from the
             rest pool of benchmarks/quality.py's deal; each draw takes whole lesions of the
             development pool, up to 150 images of each class, as the labelled budget and scores
             the development lesions outside it. Compared, one model each (--patience 0): ImageNet's
             start, and the skin start at learning rates 3e-4 and 1e-4 and as a linear probe.
  (default)  ISIC UDA as the clinic: each draw takes 300 of its 557 images at random (whole groups,
             so byte-identical twins stay together) as the budget and scores the other 257; once
             from ImageNet's start, once from the skin start, same draw, same seed, each with the
             setting chosen above, in the recommended recipe (--folds 5 --patience 0); and the
             skin start's linear probe beside them, measured only. UDA chooses nothing: every
             setting was chosen on HAM10000.

Prints each start's AUC (mean ± sd over draws) and the paired difference, and writes every run to
OUT/results.csv. Resumable: a run already scored in OUT is read back, not trained again.

  python starts/make_skin_start.py && python benchmarks/skin_start.py --choose --draws 0 1 2
  python benchmarks/skin_start.py --draws 0 1 2 3 4   # about 70 minutes on a 2-core CPU
"""
import statistics
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.quality import (LITE0, benchmark_parser, ham_subset, lesion_pools,  # noqa: E402
                                parse_with_data, run, train_and_score)

START = ROOT / "starts" / "skin-lite0.pt"
FIXED = [*LITE0, "--patience", "0"]
SKIN = [*FIXED, "--init-from", START]
SETTINGS = {  # --choose: (name, train.py options)
    "imagenet": FIXED,
    "skin-3e-4": SKIN,
    "skin-1e-4": [*SKIN, "--lr", "1e-4"],
    "skin-probe": [*LITE0, "--init-from", START, "--freeze-backbone", "--lr", "3e-3", "--epochs",
                   "100", "--patience", "20"],
}
# The clinic's comparison: the recommended recipe (--folds 5 --patience 0) from each start, the skin
# start's fine-tuning as --choose found best on HAM10000 (learning rate 1e-4, over 3 draws:
# docs/RESULTS.md); the linear probe from the skin start beside them, measured, not chosen.
CLINIC = {"imagenet": [*FIXED, "--folds", "5"], "skin": [*SKIN, "--lr", "1e-4", "--folds", "5"],
          "skin-probe": [*SETTINGS["skin-probe"], "--folds", "5"]}
BUDGET, PER_CLASS = 300, 150


def prepare_draw(source, meta, budget, data, rest, draw, metadata_name="HAM10000_metadata.csv"):
    """The budget's rows of `meta` prepared as the user would (prepare_data.py's own split), and the
    other rows as its test set, each from a folder of `source`'s layout holding them alone."""
    run("prepare_data.py", "--source",
        ham_subset(source, meta[~budget], Path(f"{rest}-source"), metadata_name), "--out", rest,
        "--test-only")
    run("prepare_data.py", "--source",
        ham_subset(source, meta[budget], Path(f"{data}-source"), metadata_name), "--out", data,
        "--seed", draw)


def uda_draw(uda, out, draw):
    """One clinic: BUDGET images of ISIC UDA (whole groups, at random) as its labelled images, the
    rest as its test set. Returns (data folder, {"UDA": (rest folder, "test")})."""
    data, rest = out / f"uda-budget-{draw}", out / f"uda-rest-{draw}"
    if not (data / "labels.csv").exists():
        if not (out / "uda" / "labels.csv").exists():
            run("prepare_data.py", "--source", uda, "--out", out / "uda", "--test-only")
        groups = pd.read_csv(out / "uda" / "labels.csv").set_index("isic_id")["group"]
        meta = pd.read_csv(uda / "metadata.csv", dtype=str)
        chosen, count = [], 0
        for group in groups.drop_duplicates().sample(frac=1, random_state=draw):
            members = groups.index[groups == group].tolist()
            if count + len(members) <= BUDGET:
                chosen += members
                count += len(members)
        prepare_draw(uda, meta, meta["isic_id"].isin(chosen), data, rest, draw, "metadata.csv")
    return data, {"UDA": (rest, "test")}


def ham_draw(ham, out, draw):
    """One HAM10000 budget from the development pool (whole lesions, up to PER_CLASS images of each
    class) and the development lesions outside it as its test set."""
    data, rest = out / f"ham-dev-budget-{draw}", out / f"ham-dev-rest-{draw}"
    if not (data / "labels.csv").exists():
        meta, pools = lesion_pools(ham)
        dev = meta[meta["lesion_id"].isin(pools["dev"])]
        malignant = dev.groupby("lesion_id")["dx"].agg(lambda dx: bool(set(dx) & {"mel", "bcc"}))
        sizes, chosen, count = dev.groupby("lesion_id").size(), [], {True: 0, False: 0}
        for lesion in malignant.sample(frac=1, random_state=draw).index:
            if count[malignant[lesion]] + sizes[lesion] <= PER_CLASS:
                chosen.append(lesion)
                count[malignant[lesion]] += sizes[lesion]
        prepare_draw(ham, dev, dev["lesion_id"].isin(chosen), data, rest, draw)
    return data, {"dev": (rest, "test")}


def main():
    parser = benchmark_parser(__doc__)
    parser.set_defaults(out=ROOT / "benchmarks" / "out" / "skin_start")
    parser.add_argument("--draws", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--choose", action="store_true", help="the settings, on HAM10000 alone")
    args = parse_with_data(parser)
    if not START.exists():
        sys.exit(f"{START} not found; make it first: python starts/make_skin_start.py")
    split = "dev" if args.choose else "UDA"
    rows = []
    for draw in args.draws:
        data, scored_on = (ham_draw(args.ham, args.out, draw) if args.choose
                           else uda_draw(args.uda, args.out, draw))
        for name, options in (SETTINGS if args.choose else CLINIC).items():
            row = train_and_score(name, options, data, scored_on, draw, args.epochs, (split,))
            rows.append({**row, "draw": draw})
            print(f"draw {draw} {name:12s} {split} AUC {row[f'{split} auc']:.3f} "
                  f"(images alone {row[f'{split} auc image alone']:.3f}; "
                  f"{row['train minutes']:.1f} min)", flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / f"results{'-choose' if args.choose else ''}.csv", index=False)
    print_summary(table, split)


def print_summary(table, split):
    """Each setting's AUC (mean ± sd over draws) and its paired difference from ImageNet's."""
    by_draw = table.pivot(index="draw", columns="recipe", values=f"{split} auc")
    alone = table.pivot(index="draw", columns="recipe", values=f"{split} auc image alone")
    print(f"\n{len(by_draw)} draws; {split} AUC (images alone), and the paired difference from "
          "ImageNet's start:\n")
    print("| start | AUC | images alone | paired difference | draws it wins |")
    print("|---|---|---|---|---|")
    for name in by_draw.columns:
        difference = by_draw[name] - by_draw["imagenet"]
        print(f"| {name} | {mean_sd(by_draw[name])} | {mean_sd(alone[name])} | "
              f"{mean_sd(difference, '+.3f')} | {(difference > 0).sum()} of {len(difference)} |")


def mean_sd(values, style=".3f"):
    spread = statistics.stdev(values) if len(values) > 1 else 0
    return f"{values.mean():{style}} ± {spread:.3f}"


if __name__ == "__main__":
    main()

"""The metadata's fusion where the population differs from the training one.

HAM10000 pools redrawn so that the body sites (or the sexes) carry melanoma otherwise than in the
training pool, as another population's would, and ISIC UDA; on each, the AUC of the images alone, of
the default fusion, and of fusions that hold the word columns' weights (sex, site) at 0 more or less
firmly (chapters/metadata.py, fit_late_fusion's word_strength), refitted after the fact from each
checkpoint's out-of-fold predictions and applied to the image-alone probabilities that evaluate.py
wrote for the pool. No image is scored again. WORD_STRENGTH was chosen with the development pool as
--pool; the figures of docs/RESULTS.md come from the test pool.

  python benchmarks/fusion_shift.py --pool data/pool --uda data/uda \\
      --run checkpoints/seed0.pt reports/pool-0 reports/uda-0 \\
      --run checkpoints/seed1.pt reports/pool-1 reports/uda-1

A shifted pool: for a field (site, sex), its words are ranked by their malignant share in the
training images (ties by the pool's) and given the pool's shares in the reverse order (the word
where melanoma was commonest gets the rarest share), each word's rows drawn without replacement to
that share; rows where the field is unknown are all kept. Each model's pool is redrawn against its
own training images.
"""
import argparse
import math
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from chapters.metadata import fit_late_fusion, fused_probabilities, refit_fusion, rows_of  # noqa: E402
from train import roc_auc  # noqa: E402
from dataset import read_labels  # noqa: E402
from model import read_checkpoint  # noqa: E402

# (name, word_strength): how firmly the word columns' weights are held at 0, against age's 1;
# 1e9 is age alone.
DESIGNS = [("words held as age's", 1.0), ("words held x10", 10.0), ("words held x30", 30.0),
           ("words held x100", 100.0), ("words held x300", 300.0), ("age alone", 1e9)]


def reversed_pool(pool, training, field, seed):
    """The pool redrawn so that the field's words carry melanoma in the reverse order of training."""
    known = pool[pool[field].notna()]
    words = [word for word in training[field].dropna().unique() if (known[field] == word).sum() >= 5]
    pool_share = {word: known.loc[known[field] == word, "label"].mean() for word in words}
    # Ties in training (the budget's sexes are half malignant each) are broken by the pool's shares,
    # so that the pool's own association is what is reversed there.
    by_training = sorted(words, key=lambda word: (training.loc[training[field] == word, "label"].mean(),
                                                  pool_share[word]))
    shares = sorted(pool_share.values(), reverse=True)
    kept = [pool[pool[field].isna() | ~pool[field].isin(words)]]
    for word, target in zip(by_training, shares):
        rows = known[known[field] == word]
        malignant, benign = rows[rows["label"] == 1], rows[rows["label"] == 0]
        if target <= 0 or target >= 1:
            kept.append(rows)
            continue
        if len(malignant) / len(rows) > target:  # fewer malignant
            malignant = malignant.sample(n=round(target / (1 - target) * len(benign)), random_state=seed)
        else:
            benign = benign.sample(n=min(len(benign), round((1 - target) / target * len(malignant))),
                                   random_state=seed)
        kept += [malignant, benign]
    return pd.concat(kept)


def aucs(fusions, table, image_alone):
    """{design: AUC} on these rows (image_alone: their image-alone probabilities)."""
    found = {"images alone": roc_auc(table["label"].tolist(), image_alone)}
    for name, fusion in fusions.items():
        found[name] = roc_auc(table["label"].tolist(), fused_probabilities(fusion, image_alone, table))
    return found


LOCAL_LABELS = (25, 50, 100)


def clinic_refits(fusion, table, image_alone, draws=5):
    """{design: AUC}: the default fusion refitted (refit_fusion) on n labelled images of this set, drawn
    at random, and scored on the rest; the default and the images alone on the same rest beside it.
    Each the mean of `draws` draws."""
    found = {}
    for n in LOCAL_LABELS:
        if n >= len(table) / 2:
            continue
        fused, before, alone = [], [], []
        for draw in range(draws):
            local = table.sample(n=n, random_state=draw)
            rest = table.drop(index=local.index)
            refitted = refit_fusion(fusion, image_alone.loc[local["isic_id"]].tolist(), local,
                                    local["label"].tolist())
            labels, probabilities = rest["label"].tolist(), image_alone.loc[rest["isic_id"]].tolist()
            fused.append(roc_auc(labels, fused_probabilities(refitted, probabilities, rest)))
            before.append(roc_auc(labels, fused_probabilities(fusion, probabilities, rest)))
            alone.append(roc_auc(labels, probabilities))
        found[f"refit on {n}"] = sum(fused) / draws
        found[f"the default, the rest of {n}"] = sum(before) / draws
        found[f"images alone, the rest of {n}"] = sum(alone) / draws
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", required=True, help="a prepared folder of other HAM10000 lesions (--test-only)")
    parser.add_argument("--uda", required=True, help="ISIC UDA, prepared with --test-only")
    parser.add_argument("--run", nargs=3, action="append", required=True,
                        metavar=("CHECKPOINT", "POOL_REPORT", "UDA_REPORT"),
                        help="a checkpoint (its --data the budget it trained on) and evaluate.py's "
                             "report folders on --pool and --uda")
    args = parser.parse_args()
    pool, uda = read_labels(args.pool), read_labels(args.uda)
    results = []
    for seed, (checkpoint_path, pool_report, uda_report) in enumerate(args.run):  # one model a seed
        checkpoint = read_checkpoint(checkpoint_path)
        budget = read_labels(checkpoint["args"]["data"])
        training = budget[budget["split"].isin(["train", "val"])]
        fusions = {"the default": fit_late_fusion(checkpoint, budget)[0]}
        fusions.update({name: fit_late_fusion(checkpoint, budget, word_strength=strength)[0]
                        for name, strength in DESIGNS})
        sets = {}
        for name, table, report in (("HAM10000 pool", pool, pool_report), ("ISIC UDA", uda, uda_report)):
            predictions = pd.read_csv(Path(report) / "predictions.csv").set_index("isic_id")
            sets[name] = (rows_of(table, predictions.index), predictions["probability_image_alone"])
        whole, image_alone = sets["HAM10000 pool"]
        for field in ("site", "sex"):
            shifted = rows_of(whole, reversed_pool(whole, training, field, seed=0)["isic_id"])
            sets[f"HAM10000 pool, {field} reversed"] = (shifted, image_alone.loc[shifted["isic_id"]])
        for name, (table, probabilities) in sets.items():
            row = aucs(fusions, table, probabilities.tolist())
            row.update(clinic_refits(fusions["the default"], table, probabilities))
            results.append({"set": name, "seed": seed, "images": len(table),
                            "malignant": table["label"].mean(), **row})
    table = pd.DataFrame(results)
    columns = [column for column in table.columns if column not in ("set", "seed", "images", "malignant")]
    print(f"| set | {' | '.join(columns)} |\n|---|{'---|' * len(columns)}")
    for name, rows in table.groupby("set", sort=False):
        cells = [f"{rows[c].mean():.3f} ± {rows[c].std(ddof=1) if len(rows) > 1 else math.nan:.3f}"
                 if rows[c].notna().any() else "–" for c in columns]
        size = f"{rows['images'].mean():.0f} images, {rows['malignant'].mean():.0%} malignant"
        print(f"| {name} ({size}) | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()

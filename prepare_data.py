r"""Step 1 of 5: turn a metadata CSV into one labelled, split table (labels.csv).

A dermoscopy collection arrives as images plus a metadata CSV whose diagnosis column is the ground
truth. This script reads that CSV, maps each diagnosis to benign (0) or malignant (1), drops rows it
cannot use (and says which), and assigns every image to train / val / test so that no lesion, no
patient and no byte-identical file ever sits on two sides of the split.

Reads (detected from the CSV's columns, or from the folder):
  HAM10000            HAM10000_metadata.csv: image_id, dx, lesion_id;   images/<image_id>.jpg
  ISIC Archive        metadata.csv: isic_id + benign_malignant or diagnosis_1;  <isic_id>.jpg
  ISIC 2024 (Kaggle)  train-metadata.csv, train-image.hdf5: chapters/isic2024.py
  folder per class    benign/*.jpg, malignant/*.jpg
  synthetic           a built-in set of drawn lesions, so everything runs offline with no data
With no --source it first downloads 400 dermoscopic images of the public ISIC Archive, half of each
class, as 256 px thumbnails (helpers/isic_archive.py; --query, --isic-size, --max-images).
Writes OUT/labels.csv with columns isic_id, image_path, label, split, group, diagnosis, cached_path
(a resized copy in OUT/resized-256/, made for each image larger than that; see --copy-size), and
the metadata that is evidence where the CSV has it (chapters/metadata.py).

Examples:
  python prepare_data.py                                  # 400 ISIC Archive images (needs internet)
  python prepare_data.py --source isic-archive --max-images 1000 --no-balanced --isic-size full \
      --out data/isic-1000
  python prepare_data.py --source synthetic --out data/drawn
  python prepare_data.py --source ../shared/data/ham10000 --out data/ham --max-images 400 --balanced
  python prepare_data.py --source ../shared/data/isic_uda --out data/uda --test-only
  python prepare_data.py --source ../clinic --out data/clinic-50 \
      --test-only                                         # 50 labelled images of a new clinic
"""
import argparse
import os
import random
from pathlib import Path

import pandas as pd

from chapters import isic2024, metadata
from helpers import isic_archive
from helpers.files import DataError, Parser, number, report_skipped, save_atomically, stop
from helpers.images import IMAGE_SUFFIXES, add_resized_copies, find_images
from helpers.synthetic import add_synthetic_options, make_synthetic
from helpers.tables import keep_readable_images, read_metadata, refuse_paths_outside

# HAM10000's seven diagnoses. Actinic keratosis / intra-epithelial carcinoma (akiec) is neither
# cleanly benign nor malignant, so it is left out rather than forced into a class.
HAM_DX = {"mel": 1, "bcc": 1, "nv": 0, "bkl": 0, "df": 0, "vasc": 0}


# --- Reading the four layouts ---------------------------------------------------------------------
# Each reader returns the same columns: isic_id, image_path, label (0/1, or NaN when the diagnosis
# is neither), diagnosis (the original text), and the grouping keys that are known (lesion,
# patient).

def read_ham10000(csv, meta):
    folders = [csv.parent / "images", csv.parent / "HAM10000_images_part_1",
               csv.parent / "HAM10000_images_part_2", csv.parent]
    return pd.DataFrame({
        "isic_id": meta["image_id"],
        "image_path": find_images(folders, meta["image_id"]),
        "label": meta["dx"].str.strip().str.lower().map(HAM_DX),
        "diagnosis": meta["dx"],
        "lesion": meta["lesion_id"],
    })


def read_isic_archive(csv, meta):
    # Newer exports give diagnosis_1 (Benign / Malignant / Indeterminate), older ones
    # benign_malignant (benign / malignant / indeterminate...). Prefer the newer where it is filled.
    diagnosis = meta["diagnosis_1"] if "diagnosis_1" in meta else pd.Series(pd.NA, index=meta.index)
    if "benign_malignant" in meta:
        diagnosis = diagnosis.fillna(meta["benign_malignant"])
    folders = [csv.parent, csv.parent / "images"]
    return pd.DataFrame({
        "isic_id": meta["isic_id"],
        "image_path": find_images(folders, meta["isic_id"]),
        "label": diagnosis.str.strip().str.lower().map({"benign": 0, "malignant": 1}),
        "diagnosis": diagnosis,
        "lesion": meta.get("lesion_id"),
        "patient": meta.get("patient_id"),
    })


def read_class_folders(root):
    rows = [{"isic_id": path.stem, "image_path": path, "label": label, "diagnosis": name}
            for label, name in enumerate(["benign", "malignant"])
            for path in sorted((root / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    return pd.DataFrame(rows, columns=["isic_id", "image_path", "label", "diagnosis"])


# The columns that identify a layout, in the order they are tried.
LAYOUTS = [
    ("HAM10000", {"image_id", "dx", "lesion_id"}, read_ham10000),
    ("ISIC 2024 challenge", isic2024.LAYOUT_COLUMNS, isic2024.read_layout),
    ("ISIC Archive", {"isic_id", "diagnosis_1"}, read_isic_archive),
    ("ISIC Archive", {"isic_id", "benign_malignant"}, read_isic_archive),
]


def read_source(source):
    """Detect the layout of a CSV file or a folder and read it into the common columns."""
    if not source.exists():
        raise DataError(f"{source} does not exist; give a metadata CSV, a data folder or "
                        "'synthetic'")
    if source.is_dir() and (source / "benign").is_dir() and (source / "malignant").is_dir():
        print(f"layout: a folder per class in {source}")
        return read_class_folders(source)
    csvs = [source] if source.is_file() else sorted(source.glob("*.csv"))
    if not csvs:
        raise DataError(f"no metadata CSV in {source} and no benign/ and malignant/ folders; "
                        "point --source at the CSV or at a folder with one class per subfolder")
    seen = []
    for csv in csvs:
        meta = read_metadata(csv)
        for name, columns, reader in LAYOUTS:
            if columns <= set(meta.columns):
                print(f"layout: {name}, from {csv} ({len(meta)} rows)")
                # Age, sex, site and measurements come along as evidence (chapters/metadata.py).
                table = reader(csv, meta).assign(**metadata.read_evidence(meta))
                return refuse_paths_outside(table, csv)
        seen.append(f"{csv.name}: {', '.join(meta.columns)}")
    expected = "; ".join(f"{name}: {', '.join(sorted(columns))}" for name, columns, _ in LAYOUTS)
    raise DataError(f"no known layout in {source}. Found columns - {' | '.join(seen)}. "
                    f"Expected one of - {expected}; or benign/ and malignant/ folders of images")


# --- Cleaning: drop what cannot be used, and say so -----------------------------------------------

def drop_unusable(table, out):
    """Keep rows with a benign/malignant label and an image that decodes; add `sha1` and
    `shorter_side`. The images left out are listed, where and why, in OUT/unreadable.csv."""
    unlabelled = table["label"].isna()
    excluded = table.loc[unlabelled, "diagnosis"].fillna("(empty)").value_counts()
    for diagnosis, count in excluded.items():
        print(f"excluded {count} rows with diagnosis '{diagnosis}' (neither benign nor malignant)")
    table = table[~unlabelled].copy()
    table["label"] = table["label"].astype(int)

    conflicting = table.groupby("isic_id")["label"].nunique().loc[lambda n: n > 1]
    if len(conflicting):
        raise DataError(f"image id {conflicting.index[0]} appears with both labels "
                        f"({len(conflicting)} such ids); fix the metadata CSV")
    report_skipped("listed twice (kept once)", table.loc[table["isic_id"].duplicated(), "isic_id"])
    table = table.drop_duplicates("isic_id")

    # Every image opened and decoded (helpers/tables.py); those that fail are named and listed.
    table = keep_readable_images(table, out / "unreadable.csv")
    refuse_label_conflicts(table)
    if table.empty:
        raise DataError("no usable rows remain: every row lacked a benign/malignant label or a "
                        "readable image; check that the images sit where the layout expects them")
    return table


def refuse_label_conflicts(table):
    """Byte-identical files are one image: under two labels, that is a mistake in the data, not a
    duplicate, and training on both would teach the model both answers for one picture."""
    labels_per_file = table.groupby("sha1")["label"].nunique()
    conflicts = labels_per_file.index[labels_per_file > 1]
    if len(conflicts):
        rows = table[table["sha1"] == conflicts[0]]
        benign, malignant = (rows.loc[rows["label"] == label, "image_path"].iloc[0]
                             for label in (0, 1))
        raise DataError(f"{benign} (benign) and {malignant} (malignant) are the same image, byte "
                        f"for byte, under two labels ({len(conflicts)} such images); correct the "
                        "label or remove one of them")


# --- Grouping and splitting -----------------------------------------------------------------------
# Two photos of one lesion look almost alike; if one is in train and the other in test, the test
# measures memory, not skill. So rows that share a lesion, a patient or identical file bytes are
# joined into one group (connected components, by union-find), and whole groups are split.

def assign_groups(table):
    parent = {}

    def root(key):
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for row in table.itertuples():
        keys = [f"image {row.isic_id}", f"file {row.sha1}"]
        keys += [f"{kind} {getattr(row, kind)}" for kind in ("lesion", "patient")
                 if kind in table and pd.notna(getattr(row, kind))]
        for key in keys[1:]:
            parent[root(key)] = root(keys[0])
    # Name each group after the most telling id it has: a patient, else a lesion, else its first
    # image.
    names = {}
    for kind in ("patient", "lesion", "isic_id"):
        if kind in table:
            for isic_id, value in zip(table["isic_id"], table[kind]):
                if pd.notna(value):
                    names.setdefault(root(f"image {isic_id}"), value)
    return [names[root(f"image {i}")] for i in table["isic_id"]]


def subsample(table, max_images, balanced, seed):
    """At most max_images rows, keeping the class ratio (or about 1:1 with balanced)."""
    counts = table["label"].value_counts()
    share = {label: 0.5 if balanced else count / len(table) for label, count in counts.items()}
    keep = [table[table["label"] == label].sample(n=min(count, round(max_images * share[label])),
                                                  random_state=seed)
            for label, count in counts.items()]
    return pd.concat(keep).sort_index()


def deal_groups(table, shares, seed):
    """Each row's bin (a split, or with train.py --folds a fold), whole groups dealt out class by
    class so that every bin gets its share of each class: largest first (so that big patients do not
    unbalance the end), each to the bin furthest below its share of that class's images. shares:
    {bin: fraction}."""
    rng = random.Random(seed)
    bin_of_group = {}
    group_label = table.groupby("group")["label"].max()  # a group with any malignant is malignant
    group_size = table.groupby("group").size()
    for label in (0, 1):
        groups = sorted(group_label.index[group_label == label])
        rng.shuffle(groups)
        groups.sort(key=lambda g: -group_size[g])        # stable: shuffled within equal sizes
        target = {name: share * group_size[groups].sum() for name, share in shares.items()}
        filled = dict.fromkeys(shares, 0)
        for group in groups:
            name = max(shares,
                       key=lambda b: (target[b] - filled[b]) / target[b] if target[b] else -1)
            bin_of_group[group] = name
            filled[name] += group_size[group]
    return table["group"].map(bin_of_group)


def check_both_classes(table, test_only):
    """A model needs both classes to learn from, and every split needs both to be scored."""
    for split, rows in table.groupby("split"):
        for label, name in ((0, "benign"), (1, "malignant")):
            if label in set(rows["label"]):
                continue
            if test_only:
                print(f"warning: no {name} images, so AUC and "
                      f"{'sensitivity' if label else 'specificity'} "
                      "will be undefined on this test set")
            elif label not in set(table["label"]):
                raise DataError(f"no {name} images at all "
                                f"({len(table)} {'malignant' if label == 0 else 'benign'});"
                                " a classifier needs examples of both classes")
            else:
                raise DataError(f"the {split} split has no {name} images: only "
                                f"{table.loc[table['label'] == label, 'group'].nunique()} {name} "
                                "groups in all; add images, or change "
                                "--val-fraction / --test-fraction")


def print_counts(table):
    counts = pd.crosstab(table["split"], table["label"].map({0: "benign", 1: "malignant"}),
                         margins=True, margins_name="total")
    splits = [s for s in ("train", "val", "test", "total") if s in counts.index]
    print(counts.reindex(splits).to_string())


def parse_arguments():
    parser = Parser(__doc__)
    add = parser.add_argument
    add("--source", default="isic-archive", help="'isic-archive' (the default: download from it), "
        "'synthetic' (offline), a metadata CSV or a data folder")
    add("--out", default="data", help="folder for labels.csv (default: data)")
    add("--seed", type=int, default=0, help="seed for the subset, the split and the synthetic set")
    add("--val-fraction", type=number(float, 0, 1, low_open=True), default=0.15,
        help="share of the groups (lesions, patients) for validation")
    add("--test-fraction", type=number(float, 0, 1, low_open=True), default=0.15,
        help="share of the groups for the test split")
    add("--test-only", action="store_true", help="put every row in 'test' (an external test set)")
    add("--max-images", type=number(int, 2), default=None, help="draw a stratified subset of this "
        f"size (isic-archive: download this many, default {isic_archive.ISIC_MAX_IMAGES})")
    add("--balanced", action=argparse.BooleanOptionalAction, default=None,
        help="about half of each class, in the subset or download (default: on for isic-archive, "
             "whose oldest matches are mostly benign; off for your own data, whose ratio is kept)")
    add("--copy-size", type=number(int, 0), default=256, metavar="PX",
        help="store a copy of every larger image, its shorter side this long, for training to read "
             "instead of decoding the original each epoch; keep it above --img-size (default 256; "
             "0: always read the originals)")
    isic_archive.add_options(parser)  # --query, --isic-size, --isic-api: what to download
    add_synthetic_options(parser)     # --synthetic-count, --synthetic-size
    args = parser.parse_args()
    if not args.test_only and args.val_fraction + args.test_fraction >= 1:
        parser.error("--val-fraction and --test-fraction leave nothing to train on; "
                     "keep their sum below 1")
    if args.balanced is None:
        args.balanced = args.source == "isic-archive"
    if args.source == "isic-archive":
        args.max_images = args.max_images or isic_archive.ISIC_MAX_IMAGES
    return args


def main():
    args = parse_arguments()
    out = Path(args.out)
    try:
        table = read_images_and_labels(args, out)    # every layout in the same columns
        table = drop_unusable(table, out)            # no label or unreadable image: left out, named
        table["group"] = assign_groups(table)        # rows of one lesion, patient or file, together
        if args.max_images:
            table = subsample(table, args.max_images, args.balanced, args.seed)
        table["split"] = split(table, args)
        check_both_classes(table, args.test_only)
        out.mkdir(parents=True, exist_ok=True)
        if args.copy_size:
            table["cached_path"] = add_resized_copies(table, out, args.copy_size)
    except DataError as error:
        stop(error)
    write_labels(table, out, args.copy_size)


def read_images_and_labels(args, out):
    """The table of --source: drawn lesions, a download from the ISIC Archive, or a folder or CSV of
    one's own."""
    if args.source == "synthetic":
        return make_synthetic(out, args.synthetic_count, args.synthetic_size, args.seed)
    if args.source == "isic-archive":
        # Each size gets its own folder, so that a later run never mixes thumbnails and originals.
        folder = out / f"isic-archive-{args.isic_size}"
        source = isic_archive.download_isic_archive(folder, args.isic_api, args.query,
                                                    args.max_images, args.balanced, args.isic_size)
        return read_source(source)
    return read_source(Path(args.source))


def split(table, args):
    """Each row's split: whole groups dealt to train, val and test (or every row to test,
    --test-only)."""
    if args.test_only:
        return "test"
    fractions = {"train": 1 - args.val_fraction - args.test_fraction,
                 "val": args.val_fraction, "test": args.test_fraction}
    return deal_groups(table, fractions, args.seed)


def write_labels(table, out, copy_size):
    """OUT/labels.csv, and what it holds in a few lines."""
    # Paths inside OUT are stored relative to it (the folder can move); others absolute.
    inside = os.path.abspath(out) + os.sep
    table["image_path"] = [os.path.relpath(p, out) if os.path.abspath(p).startswith(inside)
                           else os.path.abspath(p) for p in table["image_path"]]
    columns = ["isic_id", "image_path", "label", "split", "group", "diagnosis"]
    columns += ["cached_path"] if copy_size else []
    # The evidence beside the image (chapters/metadata.py), and the patient it is compared with
    # (isic2024.py).
    columns += metadata.evidence_columns(table) + (["patient"] if "patient" in table else [])
    # Write to a temporary name and rename: a crash never leaves a half-written labels.csv behind.
    save_atomically(out / "labels.csv", lambda tmp: table[columns].to_csv(tmp, index=False))
    print_counts(table)
    metadata.report_missing_evidence(table)
    print(f"wrote {out / 'labels.csv'} ({len(table)} images, {table['group'].nunique()} groups)")


if __name__ == "__main__":
    main()

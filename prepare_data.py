"""Step 1 of 5: turn a metadata CSV into one labelled, split table (labels.csv).

A dermoscopy collection arrives as images plus a metadata CSV whose diagnosis column is the ground
truth. This script reads that CSV, maps each diagnosis to benign (0) or malignant (1), drops rows it
cannot use (and says which), and assigns every image to train / val / test so that no lesion, no
patient and no byte-identical file ever sits on two sides of the split.

Reads (detected from the CSV's columns, or from the folder):
  HAM10000            HAM10000_metadata.csv: image_id, dx, lesion_id;   images/<image_id>.jpg
  ISIC Archive        metadata.csv: isic_id + benign_malignant or diagnosis_1;  <isic_id>.jpg
  ISIC 2024 (Kaggle)  train-metadata.csv: isic_id, target, patient_id;  train-image.hdf5 (one JPEG per
                      isic_id) or train-image/image/<isic_id>.jpg
  folder per class    benign/*.jpg, malignant/*.jpg
  synthetic           a built-in set of drawn lesions, so everything runs offline with no data
With no --source (or --source isic-archive) it first downloads a subset of the public ISIC Archive, by
default 400 dermoscopic images (200 benign, 200 malignant: the archive lists its oldest images first,
and most of those are benign) as 256 px thumbnails, into OUT/isic-archive-thumbnail/ in the layout the
official isic-cli writes, and reads that; a second run fetches only what is missing.
Writes OUT/labels.csv with columns isic_id, image_path, label, split, group, diagnosis, cached_path
(a resized copy in OUT/resized-256/, made for each image larger than that; see --copy-size), and the
metadata that is evidence where the CSV has it: age, sex, site (and ISIC 2024's lesion measurements).

Examples:
  python prepare_data.py                                          # 400 ISIC Archive images (needs internet)
  python prepare_data.py --source isic-archive --max-images 1000 --no-balanced --isic-size full
  python prepare_data.py --source synthetic
  python prepare_data.py --source ../shared/data/ham10000 --out data/ham --max-images 400 --balanced
  python prepare_data.py --source ../shared/data/isic_uda --out data/uda --test-only
  python prepare_data.py --source ../isic-2024 --out data/isic2024              # ISIC 2024, as Kaggle ships it
  python prepare_data.py --source ../clinic --out data/clinic-50 --test-only    # 50 labelled images of a new clinic
"""
import argparse
import os
import random
from pathlib import Path

import pandas as pd

from helpers import hdf5
from helpers.files import (DataError, Parser, in_threads, leads_outside, number, report_skipped,
                           save_atomically, stop)
from helpers.images import add_resized_copies, inspect_image
from helpers.isic_archive import ISIC_API, ISIC_FILES, ISIC_MAX_IMAGES, ISIC_QUERY, download_isic_archive
from helpers.synthetic import make_synthetic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

# HAM10000's seven diagnoses. Actinic keratosis / intra-epithelial carcinoma (akiec) is neither
# cleanly benign nor malignant, so it is left out rather than forced into a class.
HAM_DX = {"mel": 1, "bcc": 1, "nv": 0, "bkl": 0, "df": 0, "vasc": 0}


# --- Reading the four layouts ------------------------------------------------------------------
# Each reader returns the same columns: isic_id, image_path, label (0/1, or NaN when the diagnosis
# is neither), diagnosis (the original text), and the grouping keys that are known (lesion, patient).

def read_ham10000(csv, meta):
    folders = [csv.parent / "images", csv.parent / "HAM10000_images_part_1",
               csv.parent / "HAM10000_images_part_2", csv.parent]
    return pd.DataFrame({
        "isic_id": meta["image_id"],
        "image_path": find_images(folders, meta["image_id"]),
        "label": meta["dx"].str.strip().str.lower().map(HAM_DX),
        "diagnosis": meta["dx"],
        "lesion": meta["lesion_id"],
        **read_evidence(meta),
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
        **read_evidence(meta),
    })


def read_isic_2024(csv, meta):
    return pd.DataFrame({
        "isic_id": meta["isic_id"],
        "image_path": isic_2024_images(csv, meta["isic_id"]),
        "label": meta["target"].str.strip().map({"0": 0, "1": 1}),
        "diagnosis": meta["target"],
        "patient": meta["patient_id"],
        **read_evidence(meta),
    })


def isic_2024_images(csv, image_ids):
    """Kaggle ships the images as one HDF5 file, train-image.hdf5, and optionally unpacked as
    train-image/image/<isic_id>.jpg: the files where that folder exists, else each id's image in the HDF5."""
    folders = [csv.parent / "train-image" / "image", csv.parent / "images", csv.parent]
    packed = csv.parent / "train-image.hdf5"
    if folders[0].is_dir() or not packed.exists():
        return find_images(folders, image_ids)
    hdf5.handle(packed)  # opened once here: a truncated or foreign file stops in one line, not at every image
    return [hdf5.address(packed, image_id) for image_id in image_ids]


def read_class_folders(root):
    rows = [{"isic_id": path.stem, "image_path": path, "label": label, "diagnosis": name}
            for label, name in enumerate(["benign", "malignant"])
            for path in sorted((root / name).iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
    return pd.DataFrame(rows, columns=["isic_id", "image_path", "label", "diagnosis"])


# The columns that identify a layout, in the order they are tried.
LAYOUTS = [
    ("HAM10000", {"image_id", "dx", "lesion_id"}, read_ham10000),
    ("ISIC 2024 challenge", {"isic_id", "target", "patient_id"}, read_isic_2024),
    ("ISIC Archive", {"isic_id", "diagnosis_1"}, read_isic_archive),
    ("ISIC Archive", {"isic_id", "benign_malignant"}, read_isic_archive),
]


def find_images(folders, image_ids):
    """For each id, the first existing <folder>/<id>.<suffix>, or the first candidate if none exists."""
    # isic-cli has named its downloads <isic_id>.JPG, which a case-sensitive file system tells apart from .jpg.
    suffixes = (".jpg", ".png", ".jpeg", ".JPG", ".tif", ".tiff")
    # Each folder is listed once, and every id looked up in that list: hundreds of thousands of ids
    # would otherwise cost millions of file-system calls.
    listed = [(str(folder), set(os.listdir(folder)) if folder.is_dir() else set()) for folder in folders]
    paths = []
    for image_id in image_ids:
        names = [f"{image_id}{suffix}" for suffix in suffixes]
        found = next((os.path.join(folder, name) for folder, listing in listed for name in names if name in listing),
                     None)
        paths.append(found or os.path.join(listed[0][0], names[0]))
    return paths


def refuse_paths_outside(table, csv):
    """An id such as '../../etc/passwd' in a CSV must not become a path outside the data folder."""
    root = os.path.normpath(csv.parent)
    for isic_id, path in zip(table["isic_id"], table["image_path"]):
        plain_name = not any(part in str(isic_id) for part in ("/", "\\", ".."))  # the cheap test first
        if not plain_name and leads_outside(path, root):
            raise DataError(f"{csv}: image id {isic_id!r} leads outside {root}; fix or remove that row")
    return table


def read_metadata(csv):
    """A metadata CSV as text, every column as it is (dtype=str: no guessing, no mixed-type warnings)."""
    try:
        meta = pd.read_csv(csv, dtype=str)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv} is empty; export the metadata again, with its header row") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{csv} is not a readable CSV ({error}); export it again as comma-separated UTF-8") \
            from None
    meta.columns = meta.columns.str.strip()
    return meta


def read_source(source):
    """Detect the layout of a CSV file or a folder and read it into the common columns."""
    if not source.exists():
        raise DataError(f"{source} does not exist; give a metadata CSV, a data folder or 'synthetic'")
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
                return refuse_paths_outside(reader(csv, meta), csv)
        seen.append(f"{csv.name}: {', '.join(meta.columns)}")
    expected = "; ".join(f"{name}: {', '.join(sorted(columns))}" for name, columns, _ in LAYOUTS)
    raise DataError(f"no known layout in {source}. Found columns - {' | '.join(seen)}. "
                    f"Expected one of - {expected}; or benign/ and malignant/ folders of images")


# --- The metadata: evidence beside the pixels ----------------------------------------------------------
# A dermatologist reads more than the picture: a new mole at 70 is not a new mole at 25, and melanoma
# favours some parts of the body over others. Every collection ships such facts in its metadata CSV,
# each under its own column names and words; they are read here into one vocabulary (the ISIC
# Archive's), for train.py to weigh beside the image (see model.py, LateFusion).
#
# Evidence is what is known when the lesion is photographed, before anyone has diagnosed it. These are
# the only columns ever read as features; everything else in a CSV is ignored. In particular, columns
# that record the diagnosis, how it was confirmed, or anything known only after it would hand the model
# the answer (a "leak"): its scores would look superb and mean nothing on a new patient. They are:
#   HAM10000 dx, dx_type; ISIC Archive diagnosis*, diagnosis_confirm_type, benign_malignant, melanocytic;
#   ISIC 2024 target, lesion_id, iddx_*, mel_mitotic_index, mel_thick_mm, tbp_lv_dnn_lesion_confidence
#   (the last is the score of the vendor's own lesion classifier).
AGE_COLUMNS = ("age_approx", "age")                                    # ISIC Archive and 2024, HAM10000
SITE_COLUMNS = ("anatom_site_general", "anatom_site_general_challenge", "localization")  # new, old, HAM
# ISIC 2024 measures each lesion on a 3D total-body photograph: its size, colour and shape. Numbers too.
MEASUREMENT_COLUMNS = ("clin_size_long_diam_mm",)
MEASUREMENT_PREFIX, NOT_EVIDENCE = "tbp_lv_", {"tbp_lv_dnn_lesion_confidence"}

# Body sites, in the ISIC Archive's words (anatom_site_general), from every spelling met. "torso" is
# the older exports' word for a torso whose side is not recorded; HAM10000 says "trunk" for it.
SITES = {word: word for word in ("head/neck", "upper extremity", "lower extremity", "anterior torso",
                                  "posterior torso", "lateral torso", "torso", "palms/soles", "oral/genital")}
SITES.update({"scalp": "head/neck", "face": "head/neck", "ear": "head/neck", "neck": "head/neck",
              "chest": "anterior torso", "abdomen": "anterior torso", "back": "posterior torso",
              "trunk": "torso", "hand": "upper extremity", "foot": "lower extremity", "acral": "palms/soles",
              "genital": "oral/genital"})
SEXES = {"female": "female", "f": "female", "male": "male", "m": "male"}


def clean_age(values):
    """Ages as numbers; empty, 'NA', 'unknown' and impossible ages (below 0, over 120) become missing."""
    ages = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    return ages.where(ages.between(0, 120))


def clean_word(values, vocabulary):
    """Each text in the vocabulary's own word (case and spaces ignored); any other text becomes missing."""
    return pd.Series(values, dtype=object).map(lambda text: vocabulary.get(str(text).strip().lower()))


def read_evidence(meta):
    """The evidence columns of a metadata CSV (see above), cleaned: age, sex, site and measurements."""
    found = {}
    age = next((column for column in AGE_COLUMNS if column in meta), None)
    site = next((column for column in SITE_COLUMNS if column in meta), None)
    if age:
        found["age"] = clean_age(meta[age]).to_numpy()
    if "sex" in meta:
        found["sex"] = clean_word(meta["sex"], SEXES).to_numpy()
    if site:
        found["site"] = clean_word(meta[site], SITES).to_numpy()
    measurements = [column for column in meta.columns if column in MEASUREMENT_COLUMNS
                    or column.startswith(MEASUREMENT_PREFIX) and column not in NOT_EVIDENCE]
    for column in measurements:
        values = pd.to_numeric(meta[column], errors="coerce")
        if values.notna().any():  # a column of words (tbp_lv_location: "Left Leg") is no measurement
            found[column] = values.to_numpy()
    return found


def evidence_columns(table):
    """The evidence columns a table holds: those read_evidence wrote."""
    return [column for column in table.columns if column in ("age", "sex", "site")
            or column in MEASUREMENT_COLUMNS or column.startswith(MEASUREMENT_PREFIX)]


def report_missing_evidence(table):
    """One line: which evidence the images carry, and how much of it is missing."""
    columns = evidence_columns(table)
    if not columns:
        print("metadata: none (no age, sex or body site in this data)")
        return
    shown = [f"{column} {int(table[column].isna().sum())}" for column in columns[:6]]
    more = f", and {len(columns) - 6} more measurements" if len(columns) > 6 else ""
    print(f"metadata missing, of {len(table)} images: {', '.join(shown)}{more}")


# --- Cleaning: drop what cannot be used, and say so -------------------------------------------------

def drop_unusable(table):
    """Keep rows with a benign/malignant label and an image that decodes; add `sha1` and `shorter_side`."""
    unlabelled = table["label"].isna()
    for diagnosis, count in table.loc[unlabelled, "diagnosis"].fillna("(empty)").value_counts().items():
        print(f"excluded {count} rows with diagnosis '{diagnosis}' (neither benign nor malignant)")
    table = table[~unlabelled].copy()
    table["label"] = table["label"].astype(int)

    conflicting = table.groupby("isic_id")["label"].nunique().loc[lambda n: n > 1]
    if len(conflicting):
        raise DataError(f"image id {conflicting.index[0]} appears with both labels "
                        f"({len(conflicting)} such ids); fix the metadata CSV")
    report_skipped("listed twice (kept once)", table.loc[table["isic_id"].duplicated(), "isic_id"])
    table = table.drop_duplicates("isic_id")

    # Reading thousands of files is mostly waiting for the disk: threads overlap the waits.
    results = in_threads(inspect_image, table["image_path"].tolist(), "checked", min(8, os.cpu_count() or 1))
    table["sha1"] = [sha1 for sha1, _, _ in results]
    table["shorter_side"] = [side for _, _, side in results]
    reasons = pd.Series([reason for _, reason, _ in results], index=table.index)
    report_skipped("image file missing", table.loc[reasons == "missing", "isic_id"])
    unreadable = reasons.notna() & (reasons != "missing")
    report_skipped("image file unreadable", [f"{i} {why}" for i, why in zip(table.loc[unreadable, "isic_id"],
                                                                     reasons[unreadable])])
    table = table[reasons.isna()]
    refuse_label_conflicts(table)
    if table.empty:
        raise DataError("no usable rows remain: every row lacked a benign/malignant label or a readable "
                        "image; check that the images sit where the layout expects them")
    return table


def refuse_label_conflicts(table):
    """Byte-identical files are one image: under two labels, that is a mistake in the data, not a duplicate,
    and training on both would teach the model both answers for one picture."""
    labels_per_file = table.groupby("sha1")["label"].nunique()
    conflicts = labels_per_file.index[labels_per_file > 1]
    if len(conflicts):
        rows = table[table["sha1"] == conflicts[0]]
        benign, malignant = (rows.loc[rows["label"] == label, "image_path"].iloc[0] for label in (0, 1))
        raise DataError(f"{benign} (benign) and {malignant} (malignant) are the same image, byte for byte, under "
                        f"two labels ({len(conflicts)} such images); correct the label or remove one of them")


# --- Grouping and splitting --------------------------------------------------------------------------
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
    # Name each group after the most telling id it has: a patient, else a lesion, else its first image.
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
    keep = [table[table["label"] == label].sample(n=min(count, round(max_images * share[label])), random_state=seed)
            for label, count in counts.items()]
    return pd.concat(keep).sort_index()


def deal_groups(table, shares, seed):
    """Each row's bin (a split, or with train.py --folds a fold), whole groups dealt out class by class so
    that every bin gets its share of each class: largest first (so that big patients do not unbalance the
    end), each to the bin furthest below its share of that class's images. shares: {bin: fraction}."""
    rng = random.Random(seed)
    bin_of_group = {}
    group_label = table.groupby("group")["label"].max()        # a group with any malignant is malignant
    group_size = table.groupby("group").size()
    for label in (0, 1):
        groups = sorted(group_label.index[group_label == label])
        rng.shuffle(groups)
        groups.sort(key=lambda g: -group_size[g])                 # stable: shuffled within equal sizes
        target = {name: share * group_size[groups].sum() for name, share in shares.items()}
        filled = dict.fromkeys(shares, 0)
        for group in groups:
            name = max(shares, key=lambda b: (target[b] - filled[b]) / target[b] if target[b] else -1)
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
                print(f"warning: no {name} images, so AUC and {'sensitivity' if label else 'specificity'} "
                      "will be undefined on this test set")
            elif label not in set(table["label"]):
                raise DataError(f"no {name} images at all ({len(table)} {'malignant' if label == 0 else 'benign'});"
                                " a classifier needs examples of both classes")
            else:
                raise DataError(f"the {split} split has no {name} images: only "
                                f"{table.loc[table['label'] == label, 'group'].nunique()} {name} groups in all; "
                                "add images, or change --val-fraction / --test-fraction")


def print_counts(table):
    counts = pd.crosstab(table["split"], table["label"].map({0: "benign", 1: "malignant"}), margins=True,
                         margins_name="total")
    print(counts.reindex([s for s in ("train", "val", "test", "total") if s in counts.index]).to_string())


def parse_arguments():
    parser = Parser(__doc__)
    parser.add_argument("--source", default="isic-archive",
                        help="'isic-archive' (the default: download from it), 'synthetic' (offline), "
                             "a metadata CSV or a data folder")
    parser.add_argument("--out", default="data", help="folder for labels.csv (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the subset, the split and the synthetic set")
    parser.add_argument("--val-fraction", type=number(float, 0, 1, low_open=True), default=0.15,
                        help="share of the groups (lesions, patients) for validation")
    parser.add_argument("--test-fraction", type=number(float, 0, 1, low_open=True), default=0.15,
                        help="share of the groups for the test split")
    parser.add_argument("--test-only", action="store_true", help="put every row in 'test' (an external test set)")
    parser.add_argument("--max-images", type=number(int, 2), default=None,
                        help=f"draw a stratified subset of this size (isic-archive: download this many, "
                             f"default {ISIC_MAX_IMAGES})")
    parser.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=None,
                        help="about half of each class, in the subset or download (default: on for isic-archive, "
                             "whose oldest matches are mostly benign; off for your own data, whose ratio is kept)")
    parser.add_argument("--query", default=ISIC_QUERY,
                        help="isic-archive: the search, in the archive's syntax (default: dermoscopic images "
                             "diagnosed benign or malignant). FIELD:VALUE terms joined by upper-case AND / OR; "
                             "values are case-sensitive (diagnosis_1:Benign); the diagnosis is in diagnosis_1 "
                             "(Benign, Malignant, Indeterminate) to diagnosis_5; benign_malignant exists only in "
                             "old exports and cannot be searched. Results come oldest first")
    parser.add_argument("--isic-size", choices=ISIC_FILES, default="thumbnail",
                        help="isic-archive: 'thumbnail' (256 px, the default) or 'full' (the original files)")
    parser.add_argument("--isic-api", default=ISIC_API, help=f"isic-archive: the API's address (default: {ISIC_API})")
    parser.add_argument("--copy-size", type=number(int, 0), default=256, metavar="PX",
                        help="store a copy of every larger image, its shorter side this long, for training to "
                             "read instead of decoding the original each epoch; keep it above --img-size "
                             "(default 256; 0: always read the originals)")
    parser.add_argument("--synthetic-count", type=number(int, 20), default=600, help="images in the synthetic set")
    parser.add_argument("--synthetic-size", type=number(int, 32), default=128, help="side of a drawn image, in pixels")
    args = parser.parse_args()
    if not args.test_only and args.val_fraction + args.test_fraction >= 1:
        parser.error("--val-fraction and --test-fraction leave nothing to train on; keep their sum below 1")
    if args.balanced is None:
        args.balanced = args.source == "isic-archive"
    if args.source == "isic-archive":
        args.max_images = args.max_images or ISIC_MAX_IMAGES
    return args


def main():
    args = parse_arguments()
    out = Path(args.out)
    try:
        if args.source == "synthetic":
            table = make_synthetic(out, args.synthetic_count, args.synthetic_size, args.seed)
        elif args.source == "isic-archive":
            # Each size gets its own folder, so that a later run never mixes thumbnails and originals.
            folder = out / f"isic-archive-{args.isic_size}"
            table = read_source(download_isic_archive(folder, args.isic_api, args.query, args.max_images,
                                                      args.balanced, args.isic_size))
        else:
            table = read_source(Path(args.source))
        table = drop_unusable(table)
        table["group"] = assign_groups(table)
        if args.max_images:
            table = subsample(table, args.max_images, args.balanced, args.seed)
        if args.test_only:
            table["split"] = "test"
        else:
            fractions = {"train": 1 - args.val_fraction - args.test_fraction,
                         "val": args.val_fraction, "test": args.test_fraction}
            table["split"] = deal_groups(table, fractions, args.seed)
        check_both_classes(table, args.test_only)
        out.mkdir(parents=True, exist_ok=True)
        if args.copy_size:
            table["cached_path"] = add_resized_copies(table, out, args.copy_size)
    except DataError as error:
        stop(error)

    # Paths inside OUT are stored relative to it (the folder can move); others absolute.
    inside = os.path.abspath(out) + os.sep
    table["image_path"] = [os.path.relpath(p, out) if os.path.abspath(p).startswith(inside) else os.path.abspath(p)
                           for p in table["image_path"]]
    columns = ["isic_id", "image_path", "label", "split", "group", "diagnosis"]
    columns += ["cached_path"] if args.copy_size else []
    columns += evidence_columns(table) + (["patient"] if "patient" in table else [])  # see dataset.py: "vs patient"
    # Write to a temporary name and rename: a crash never leaves a half-written labels.csv behind.
    save_atomically(out / "labels.csv", lambda tmp: table[columns].to_csv(tmp, index=False))
    print_counts(table)
    report_missing_evidence(table)
    print(f"wrote {out / 'labels.csv'} ({len(table)} images, {table['group'].nunique()} groups)")


if __name__ == "__main__":
    main()

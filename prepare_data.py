"""Step 1 of 5: turn a metadata CSV into one labelled, split table (labels.csv).

A dermoscopy collection arrives as images plus a metadata CSV whose diagnosis column is the ground
truth. This script reads that CSV, maps each diagnosis to benign (0) or malignant (1), drops rows it
cannot use (and says which), and assigns every image to train / val / test so that no lesion, no
patient and no byte-identical file ever sits on two sides of the split.

Reads (detected from the CSV's columns, or from the folder):
  HAM10000            HAM10000_metadata.csv: image_id, dx, lesion_id;   images/<image_id>.jpg
  ISIC Archive        metadata.csv: isic_id + benign_malignant or diagnosis_1;  <isic_id>.jpg
  ISIC 2024 (Kaggle)  train-metadata.csv: isic_id, target, patient_id;  train-image/image/<isic_id>.jpg
  folder per class    benign/*.jpg, malignant/*.jpg
  synthetic           a built-in set of drawn lesions, so everything runs offline with no data
Writes OUT/labels.csv with columns isic_id, image_path, label, split, group, diagnosis.

Examples:
  python prepare_data.py --source synthetic
  python prepare_data.py --source ../shared/data/ham10000 --out data/ham --max-images 400 --balanced
  python prepare_data.py --source ../shared/data/isic_uda --out data/uda --test-only
"""
import argparse
import hashlib
import io
import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from dataset import DataError, Progress, refuse_huge

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
        "image_path": [find_image(folders, i) for i in meta["image_id"]],
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
        "image_path": [find_image(folders, i) for i in meta["isic_id"]],
        "label": diagnosis.str.strip().str.lower().map({"benign": 0, "malignant": 1}),
        "diagnosis": diagnosis,
        "lesion": meta.get("lesion_id"),
        "patient": meta.get("patient_id"),
    })


def read_isic_2024(csv, meta):
    folders = [csv.parent / "train-image" / "image", csv.parent / "images", csv.parent]
    return pd.DataFrame({
        "isic_id": meta["isic_id"],
        "image_path": [find_image(folders, i) for i in meta["isic_id"]],
        "label": meta["target"].str.strip().map({"0": 0, "1": 1}),
        "diagnosis": meta["target"],
        "patient": meta["patient_id"],
    })


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


def find_image(folders, image_id):
    """The first existing <folder>/<image_id>.<suffix>, or the first candidate if none exists."""
    candidates = [folder / f"{image_id}{suffix}" for folder in folders for suffix in (".jpg", ".png", ".jpeg")]
    return next((path for path in candidates if path.exists()), candidates[0])


def refuse_paths_outside(table, csv):
    """An id such as '../../etc/passwd' in a CSV must not become a path outside the data folder."""
    root = os.path.normpath(csv.parent)
    for isic_id, path in zip(table["isic_id"], table["image_path"]):
        if not Path(os.path.normpath(path)).is_relative_to(root):
            raise DataError(f"{csv}: image id {isic_id!r} leads outside {root}; fix or remove that row")
    return table


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
        try:
            meta = pd.read_csv(csv, dtype=str)
        except pd.errors.EmptyDataError:
            raise DataError(f"{csv} is empty; export the metadata again, with its header row") from None
        except (pd.errors.ParserError, UnicodeDecodeError) as error:
            raise DataError(f"{csv} is not a readable CSV ({error}); export it again as comma-separated UTF-8") \
                from None
        meta.columns = meta.columns.str.strip()
        for name, columns, reader in LAYOUTS:
            if columns <= set(meta.columns):
                print(f"layout: {name}, from {csv} ({len(meta)} rows)")
                return refuse_paths_outside(reader(csv, meta), csv)
        seen.append(f"{csv.name}: {', '.join(meta.columns)}")
    expected = "; ".join(f"{name}: {', '.join(sorted(columns))}" for name, columns, _ in LAYOUTS)
    raise DataError(f"no known layout in {source}. Found columns - {' | '.join(seen)}. "
                    f"Expected one of - {expected}; or benign/ and malignant/ folders of images")


# --- The built-in synthetic set ------------------------------------------------------------------
# Drawn lesions with the ABCD cues dermatologists use: benign ones are small, round, evenly bordered
# and one even brown; malignant ones are larger, asymmetric, with an irregular border and several
# colours. Each cue is drawn from the *other* class one time in five, so the classes overlap and no
# model can be perfect: a model has to weigh the cues together, as on real data.

def draw_lesion(rng, malignant, size):
    def cue():  # does this cue look malignant?
        return malignant != (rng.random() < 0.2)
    large, irregular, multicoloured = cue(), cue(), cue()

    # Skin: a random skin tone with soft blotches and fine grain.
    red = rng.randint(190, 240)
    green = red - rng.randint(35, 65)
    tone = (red, green, green - rng.randint(15, 40))
    blotches = Image.frombytes("L", (6, 6), rng.randbytes(36)).resize((size, size), Image.BICUBIC)
    image = Image.composite(Image.new("RGB", (size, size), tuple(c - 25 for c in tone)),
                            Image.new("RGB", (size, size), tone), blotches)
    grain = Image.frombytes("L", (size, size), rng.randbytes(size * size)).convert("RGB")
    image = Image.blend(image, grain, 0.08)

    # The outline: a circle whose radius wobbles with a few random harmonics, then stretched.
    radius = size * (rng.uniform(0.24, 0.36) if large else rng.uniform(0.13, 0.25))
    wobble = 0.12 if irregular else 0.025
    harmonics = [(k, rng.uniform(0, wobble), rng.uniform(0, 2 * math.pi)) for k in range(2, 8)]
    stretch = rng.uniform(1.0, 1.5) if irregular else rng.uniform(1.0, 1.1)
    centre = (size / 2 + rng.uniform(-0.08, 0.08) * size, size / 2 + rng.uniform(-0.08, 0.08) * size)
    outline = []
    for step in range(72):
        angle = 2 * math.pi * step / 72
        r = radius * (1 + sum(a * math.sin(k * angle + phase) for k, a, phase in harmonics))
        outline.append((centre[0] + stretch * r * math.cos(angle), centre[1] + r * math.sin(angle)))
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).polygon(outline, fill=255)

    # The pigment: one brown, plus blotches of black, blue-grey or red when multicoloured.
    red = rng.randint(90, 150)
    brown = (red, int(red * rng.uniform(0.5, 0.65)), int(red * rng.uniform(0.25, 0.4)))
    pigment = Image.new("RGB", (size, size), brown)
    if multicoloured:
        draw = ImageDraw.Draw(pigment)
        for _ in range(rng.randint(2, 4)):
            colour = rng.choice([(45, 30, 28), (85, 95, 120), (165, 70, 60), (70, 40, 30)])
            x, y = rng.choice(outline)
            x, y = (x + centre[0]) / 2, (y + centre[1]) / 2
            blob = radius * rng.uniform(0.25, 0.5)
            draw.ellipse([x - blob, y - blob * rng.uniform(0.6, 1.4), x + blob, y + blob], fill=colour)
    mask = mask.filter(ImageFilter.GaussianBlur(size / 100 if irregular else size / 40))
    image = Image.composite(pigment.filter(ImageFilter.GaussianBlur(size / 60)), image, mask)
    return image


def make_synthetic(out, count, size, seed):
    """Draw `count` lesions (about a third malignant) into OUT/images; deterministic for a seed."""
    rng = random.Random(seed)
    folder = out / "images"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index in range(count):
        malignant = rng.random() < 0.35
        image_id = f"SYN_{index:05d}"
        path = folder / f"{image_id}.jpg"
        draw_lesion(rng, malignant, size).save(path, quality=92)
        rows.append({"isic_id": image_id, "image_path": path, "label": int(malignant),
                     "diagnosis": "synthetic " + ("malignant" if malignant else "benign")})
    print(f"drew {count} synthetic lesions of {size}x{size} px into {folder}")
    return pd.DataFrame(rows)


# --- Cleaning: drop what cannot be used, and say so -------------------------------------------------

def inspect_image(path):
    """(sha1 of the file, None) if it decodes, else (None, the reason)."""
    try:
        data = Path(path).read_bytes()
        image = Image.open(io.BytesIO(data))
        refuse_huge(image, path)
        # Decode at 1/8 scale: JPEG can do that almost for free, and it still reads every byte,
        # so a truncated file is caught without the cost of a full-size decode.
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
        image.load()
        return hashlib.sha1(data).hexdigest(), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, DataError) as error:
        return None, f"unreadable ({error})"


def report(what, ids):
    if len(ids):
        examples = ", ".join(map(str, list(ids)[:5])) + (", ..." if len(ids) > 5 else "")
        print(f"skipped {len(ids)} rows: {what}: {examples}")


def drop_unusable(table):
    """Keep rows with a benign/malignant label and an image that decodes; add a `sha1` column."""
    unlabelled = table["label"].isna()
    for diagnosis, count in table.loc[unlabelled, "diagnosis"].fillna("(empty)").value_counts().items():
        print(f"excluded {count} rows with diagnosis '{diagnosis}' (neither benign nor malignant)")
    table = table[~unlabelled].copy()
    table["label"] = table["label"].astype(int)

    conflicting = table.groupby("isic_id")["label"].nunique().loc[lambda n: n > 1]
    if len(conflicting):
        raise DataError(f"image id {conflicting.index[0]} appears with both labels "
                        f"({len(conflicting)} such ids); fix the metadata CSV")
    report("listed twice (kept once)", table.loc[table["isic_id"].duplicated(), "isic_id"])
    table = table.drop_duplicates("isic_id")

    # Reading thousands of files is mostly waiting for the disk: threads overlap the waits.
    results, progress = [], Progress("checked", len(table))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(inspect_image, table["image_path"], chunksize=64):
            results.append(result)
            progress.update(len(results))
    progress.close()
    table["sha1"] = [sha1 for sha1, _ in results]
    reasons = pd.Series([reason for _, reason in results], index=table.index)
    report("image file missing", table.loc[reasons == "missing", "isic_id"])
    unreadable = reasons.notna() & (reasons != "missing")
    report("image file unreadable", [f"{i} {why}" for i, why in zip(table.loc[unreadable, "isic_id"],
                                                                     reasons[unreadable])])
    table = table[reasons.isna()]
    if table.empty:
        raise DataError("no usable rows remain: every row lacked a benign/malignant label or a readable "
                        "image; check that the images sit where the layout expects them")
    return table


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


def assign_splits(table, fractions, seed):
    """Give each group a split, class by class, so that every split gets its share of each class.

    Groups are dealt out largest first (so big patients do not unbalance the end), each to the split
    that is furthest below its target number of images.
    """
    rng = random.Random(seed)
    split_of_group = {}
    group_label = table.groupby("group")["label"].max()        # a group with any malignant is malignant
    group_size = table.groupby("group").size()
    for label in (0, 1):
        groups = sorted(group_label.index[group_label == label])
        rng.shuffle(groups)
        groups.sort(key=lambda g: -group_size[g])                 # stable: shuffled within equal sizes
        target = {split: share * group_size[groups].sum() for split, share in fractions.items()}
        filled = dict.fromkeys(fractions, 0)
        for group in groups:
            split = max(fractions, key=lambda s: (target[s] - filled[s]) / target[s] if target[s] else -1)
            split_of_group[group] = split
            filled[split] += group_size[group]
    return table["group"].map(split_of_group)


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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=None,
                        help="a metadata CSV, a data folder, or 'synthetic' (the default for now)")
    parser.add_argument("--out", default="data", help="folder for labels.csv (default: data)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the subset, the split and the synthetic set")
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--test-fraction", type=float, default=0.15)
    parser.add_argument("--test-only", action="store_true", help="put every row in 'test' (an external test set)")
    parser.add_argument("--max-images", type=int, default=None, help="draw a stratified subset of this size")
    parser.add_argument("--balanced", action="store_true", help="with --max-images: about half of each class")
    parser.add_argument("--synthetic-count", type=int, default=600, help="images in the synthetic set")
    parser.add_argument("--synthetic-size", type=int, default=128, help="side of a synthetic image, in pixels")
    args = parser.parse_args()
    if args.source is None:
        print("no --source given: using the built-in synthetic set (--source synthetic)")
        args.source = "synthetic"

    out = Path(args.out)
    try:
        if args.source == "synthetic":
            table = make_synthetic(out, args.synthetic_count, args.synthetic_size, args.seed)
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
            table["split"] = assign_splits(table, fractions, args.seed)
        check_both_classes(table, args.test_only)
    except DataError as error:
        parser.exit(2, f"error: {error}\n")

    # Paths inside OUT are stored relative to it (the folder can move); others absolute.
    out.mkdir(parents=True, exist_ok=True)
    table["image_path"] = [os.path.relpath(p, out) if Path(p).resolve().is_relative_to(out.resolve())
                           else str(Path(p).resolve()) for p in table["image_path"]]
    columns = ["isic_id", "image_path", "label", "split", "group", "diagnosis"]
    # Write to a temporary name and rename: a crash never leaves a half-written labels.csv behind.
    tmp = out / "labels.csv.tmp"
    table[columns].to_csv(tmp, index=False)
    os.replace(tmp, out / "labels.csv")
    print_counts(table)
    print(f"wrote {out / 'labels.csv'} ({len(table)} images, {table['group'].nunique()} groups)")


if __name__ == "__main__":
    main()

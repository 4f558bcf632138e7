"""Scoring images that have no label: a submission for a folder, a CSV or an HDF5 file, and
one image.

Training and evaluation read labels.csv, whose every row has a label. A model's use is the other way
round: images nobody has diagnosed yet. evaluate.py reaches here in one line for each:
- --predict PATH writes OUT/submission.csv (isic_id, target: the probability of malignancy), one row
  per image in the order given, as the ISIC 2024 challenge takes it, once every image is checked
  (those that cannot be read are all listed in OUT/unreadable.csv, and stop the run unless
  --skip-unreadable scores the rest). PATH is a metadata CSV (its
  rows in order; the images in an HDF5 file beside it, as test-metadata.csv has test-image.hdf5, or
  as files beside it, in images/ or in test-image/image/), an HDF5 file (every key, sorted) or a
  folder of image files (sorted by name, each named after its file);
- --image FILE scores one image, with the patient's age, sex and site if given, and draws where the
  model looked (its Grad-CAM, chapters/grad_cam.py).
Either is scored exactly as a split is (evaluate.py's Models.score: the same transform, test-time
augmentation, ensemble and metadata), with a table of the columns a split has: isic_id, load_path
(the file, or 'FILE.hdf5::KEY' inside an HDF5 file), label (0: unknown, never read) and
the evidence.

Examples:
  python evaluate.py checkpoints/resnet.pt --image lesion.jpg --age 62 --sex female \
      --site "lower extremity" --out reports/lesion-62
  python evaluate.py checkpoints/resnet.pt --image lesion.jpg \
      --threshold-from data/clinic-50 --out reports/lesion-clinic    # a new clinic's threshold
  python evaluate.py checkpoints/resnet.pt --predict photos/ --out reports/photos  # an image folder
"""
import os
from pathlib import Path

import pandas as pd

from chapters import calibration, metadata, novelty
from chapters.grad_cam import grad_cam, overlay
from dataset import CustomDataset
from helpers import hdf5
from helpers.charts import to_picture
from helpers.files import DataError, save_atomically, save_image
from helpers.images import IMAGE_SUFFIXES, find_images, inspect_images
from helpers.tables import read_metadata, refuse_paths_outside, write_unreadable


def add_options(parser, instead):
    """evaluate.py's options for images without labels; --image and --predict go in `instead`,
    the group of what is done instead of a report on a split."""
    instead.add_argument("--image", default=None, help="classify this one image instead")
    instead.add_argument("--predict", default=None, metavar="PATH",
                         help="write OUT/submission.csv (isic_id, target) for images without "
                              "labels: a metadata CSV, an HDF5 file or a folder of images "
                              "(chapters/unlabelled.py)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="with --predict: score the images that can be read, leave the others "
                             "out of submission.csv and list them in OUT/unreadable.csv (by "
                             "default any unreadable image stops the run, as a submission needs "
                             "every row)")


def refuse_conflicts(args, parser):
    if args.skip_unreadable and not args.predict:
        parser.error("--skip-unreadable goes with --predict")


# --- Which images, in which order -----------------------------------------------------------------

def prediction_table(path):
    """The images that --predict scores, in the submission's order, as Models.score takes them; from
    a metadata CSV, every column of its rows, its evidence (age, sex, site,
    measurements) cleaned."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; "
                        "give a metadata CSV, an HDF5 file or a folder of images")
    if path.is_dir():
        files = sorted(file for file in path.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
        table = pd.DataFrame({"isic_id": [file.stem for file in files],
                              "load_path": list(map(str, files))})
        twice = table["isic_id"][table["isic_id"].duplicated()].tolist()
        if twice:  # a.jpg and a.png: one id, two rows of a submission
            raise DataError(f"{path}: two image files are named {twice[0]!r}; "
                            "rename or remove one of them")
    elif path.suffix.lower() in hdf5.SUFFIXES:
        keys = hdf5.keys(path)
        table = pd.DataFrame({"isic_id": keys,
                              "load_path": [hdf5.address(path, key) for key in keys]})
    else:
        table = csv_images(path, read_metadata(path))
    if table.empty:
        raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))} files, "
                        "or HDF5 keys); point --predict at the images")
    return table.assign(label=0)


def csv_images(csv, meta):
    """A metadata CSV's rows with the load_path of each row's image: in the HDF5 file beside it, if
    any (see helpers/hdf5.py), else <isic_id>.jpg (.png ...) beside it, in images/ or in
    test-image/image/. A row without an image gets a `missing` note (see unreadable_images)."""
    if "isic_id" not in meta:
        raise DataError(f"{csv} has no isic_id column (it has: {', '.join(meta.columns)}); "
                        "--predict reads a metadata CSV with one row per image, named by isic_id")
    ids, packed = meta["isic_id"].fillna(""), hdf5.beside(csv)
    if packed:
        paths = [hdf5.address(packed, image_id) for image_id in ids]
        missing = ~ids.isin(set(hdf5.keys(packed)))
    else:
        folders = [csv.parent, csv.parent / "images", csv.parent / "test-image" / "image"]
        paths = find_images(folders, ids)
        refuse_paths_outside(pd.DataFrame({"isic_id": ids, "image_path": paths}), csv)
        missing = ~pd.Series(map(os.path.exists, paths), index=meta.index)
    notes = [f"missing: {csv.name}, line {row + 2}: no image {ids[row]!r} in {packed or csv.parent}"
             if gone else None for row, gone in zip(meta.index, missing)]
    # Its metadata, cleaned as prepare_data.py cleans it, for the models that weigh it.
    return meta.assign(load_path=paths, missing=notes, **metadata.read_evidence(meta))


# --- Every image checked before any is scored -----------------------------------------------------
# A submission must have one row per image (Kaggle refuses one that lacks a row), and scoring
# 100,000 images takes hours: broken files found one per run would cost a run each. So every image
# is opened and decoded (at 1/8 scale, as prepare_data.py checks them) before the first is scored,
# and all that fail are named at once, in OUT/unreadable.csv.

def unreadable_images(table):
    """The reason each image of the table that cannot be scored fails (a Series, by row); empty if
    all can be. A CSV's rows already known to have no image (their `missing` note) are not read."""
    reasons = table.get("missing", pd.Series(None, index=table.index)).astype(object)
    unchecked = reasons.isna()
    checked = inspect_images(table.loc[unchecked, "load_path"])
    reasons[unchecked] = [reason for _, reason, _ in checked]
    return reasons.dropna()


def set_aside_unreadable(table, out, skip_unreadable):
    """The table's readable rows. The others are listed in OUT/unreadable.csv; unless
    --skip-unreadable, they stop the run (DataError) before anything is scored or written."""
    reasons = unreadable_images(table)
    bad = table.loc[reasons.index]
    listing = out / "unreadable.csv"
    write_unreadable(listing, bad["isic_id"], bad["load_path"], reasons)
    if len(bad) and not skip_unreadable:
        examples = "; ".join(f"{where}: {why}"
                             for where, why in zip(bad["load_path"][:3], reasons[:3]))
        raise DataError(f"{len(bad):,} of {len(table):,} images cannot be scored: {examples}"
                        f"{'; ...' if len(bad) > 3 else ''}. All are listed in {listing}; "
                        "replace or remove them, or score the rest with --skip-unreadable "
                        "(no submission written)")
    return table.drop(index=reasons.index)


# --- Scoring them ---------------------------------------------------------------------------------

def write_submission(path, models, out, skip_unreadable=False):
    """OUT/submission.csv: isic_id and target, each image's P(malignant), scored as a split is; with
    skip_unreadable, the readable images only."""
    every = prediction_table(path)
    table = set_aside_unreadable(every, out, skip_unreadable)
    if table.empty:
        raise DataError(f"none of the {len(every):,} images of {path} can be read; see "
                        f"{out / 'unreadable.csv'}")
    print(models.metadata_note(table))
    print(calibration.describe(models.prevalence))
    probabilities, _, _ = models.score(table)
    submission = pd.DataFrame({"isic_id": table["isic_id"], "target": probabilities})
    save_atomically(out / "submission.csv", lambda tmp: submission.to_csv(tmp, index=False))
    unlike = novelty.check(models, table)  # beside it: OUT/predictions.csv, with the flag
    novelty.write_predictions(table, probabilities, unlike, out / "predictions.csv")
    novelty.summary(unlike, models)
    if len(table) < len(every):
        print(f"wrote {out / 'submission.csv'}: scored {len(table):,} of {len(every):,} images; "
              f"{len(every) - len(table):,} unreadable, listed in {out / 'unreadable.csv'}")
    else:
        print(f"wrote {out / 'submission.csv'}: P(malignant) of {len(submission)} images")


def classify_image(path, models, threshold, out, age=None, sex=None, site=None):
    """One image, scored exactly as a split is (same transform, TTA, ensemble and metadata), and
    its Grad-CAM."""
    table = pd.DataFrame({"isic_id": [Path(path).stem], "load_path": [str(path)], "label": [0],
                          **metadata.from_command_line(age, sex, site)})
    print(models.metadata_note(table))
    (probability,), _, _ = models.score(table, batch_size=1)
    verdict = "malignant" if probability >= threshold else "benign"
    print(f"{path}: P(malignant) = {probability:.3f} -> {verdict} (threshold {threshold:.3g}); "
          f"{calibration.describe(models.prevalence)}")
    print(novelty.in_words(novelty.check(models, table), models) or "")
    model, checkpoint = models.members[0]
    tensor = CustomDataset(table, models.transform())[0][0].to(models.device)
    picture = to_picture(tensor, checkpoint["mean"], checkpoint["std"])
    cam = grad_cam(model, tensor, towards=int(probability >= threshold))  # evidence for its answer
    save_image(overlay(picture, cam), out / f"grad_cam_{Path(path).stem}.png")
    print(f"where it saw {verdict} evidence: {out / f'grad_cam_{Path(path).stem}.png'}")

"""Scoring images that have no label: a submission for a folder, a CSV or an HDF5 file, and
one image.

Training and evaluation read labels.csv, whose every row has a label. A model's use is the other way
round: images nobody has diagnosed yet. evaluate.py reaches here in one line for each:
- --predict PATH writes OUT/submission.csv (isic_id, target: the probability of malignancy), one row
  per image in the order given, as the ISIC 2024 challenge takes it. PATH is a metadata CSV (its
  rows in order; the images in an HDF5 file beside it, as test-metadata.csv has test-image.hdf5, or
  as files beside it, in images/ or in test-image/image/), an HDF5 file (every key, sorted) or a
  folder of image files (sorted by name, each named after its file);
- --image FILE scores one image, with the patient's age, sex and site if given, and draws where the
  model looked (its Grad-CAM, chapters/grad_cam.py).
Either is scored exactly as a split is (evaluate.py's Models.score: the same transform, test-time
augmentation, ensemble and metadata), with a table of the columns a split has: isic_id, load_path
(the file, or 'FILE.hdf5::KEY' inside an HDF5 file), label (0: unknown, never read) and
the evidence.
"""
import os
from pathlib import Path

import pandas as pd

from chapters import metadata
from chapters.grad_cam import grad_cam, overlay
from dataset import CustomDataset
from helpers import hdf5
from helpers.charts import to_picture
from helpers.files import DataError, save_atomically, save_image
from helpers.tables import read_metadata, refuse_paths_outside
from helpers.images import IMAGE_SUFFIXES, find_images


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
    test-image/image/. A row without an image stops the run: a submission lacking a row would be
    refused, or scored wrong."""
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
    if missing.any():
        row = missing.idxmax()
        raise DataError(f"{csv}, line {row + 2}: no image {ids[row]!r} in {packed or csv.parent} "
                        f"({missing.sum()} such rows); add the images, or remove those rows")
    # Its metadata, cleaned as prepare_data.py cleans it, for the models that weigh it.
    return meta.assign(load_path=paths, **metadata.read_evidence(meta))


# --- Scoring them ---------------------------------------------------------------------------------

def write_submission(path, models, out):
    """OUT/submission.csv: isic_id and target, each image's P(malignant), scored as a split is."""
    table = prediction_table(path)
    print(models.metadata_note(table))
    probabilities, _, _ = models.score(table)
    submission = pd.DataFrame({"isic_id": table["isic_id"], "target": probabilities})
    save_atomically(out / "submission.csv", lambda tmp: submission.to_csv(tmp, index=False))
    print(f"wrote {out / 'submission.csv'}: P(malignant) of {len(submission)} images")


def classify_image(path, models, threshold, out, age=None, sex=None, site=None):
    """One image, scored exactly as a split is (same transform, TTA, ensemble and metadata), and
    its Grad-CAM."""
    table = pd.DataFrame({"isic_id": [Path(path).stem], "load_path": [str(path)], "label": [0],
                          **metadata.from_command_line(age, sex, site)})
    print(models.metadata_note(table))
    (probability,), _, _ = models.score(table, batch_size=1)
    verdict = "malignant" if probability >= threshold else "benign"
    print(f"{path}: P(malignant) = {probability:.3f} -> {verdict} (threshold {threshold:.3g})")
    model, checkpoint = models.members[0]
    tensor = CustomDataset(table, models.transform())[0][0].to(models.device)
    picture = to_picture(tensor, checkpoint["mean"], checkpoint["std"])
    cam = grad_cam(model, tensor, towards=int(probability >= threshold))  # evidence for its answer
    save_image(overlay(picture, cam), out / f"grad_cam_{Path(path).stem}.png")
    print(f"where it saw {verdict} evidence: {out / f'grad_cam_{Path(path).stem}.png'}")

"""ISIC 2024 (the Kaggle challenge): its layout, its HDF5 file of images, and its
lesion measurements.

The ISIC 2024 challenge ships 401,059 crops of 3D total-body photographs, one malignant in a
thousand, in a layout of its own:
  train-metadata.csv   isic_id, target (0/1), patient_id, and 52 more columns (see below)
  train-image.hdf5     one dataset per isic_id, holding the bytes of that image's JPEG file
  test-metadata.csv, test-image.hdf5, sample_submission.csv (isic_id,target) for the hidden test set
This module is what the project knows of it:
1. the layout: prepare_data.py recognises train-metadata.csv by its columns (LAYOUT_COLUMNS) and
   calls read_layout, which finds each image in the HDF5 file (or in an unpacked
   train-image/image/ folder);
2. the measurements: each lesion's size, colour and shape, measured on the total-body photograph
   (the tbp_lv_* columns), read as evidence beside age, sex and site (chapters/metadata.py);
3. the "ugly duckling" sign: each measurement against the same patient's other lesions.
evaluate.py --predict test-metadata.csv scores the test set (chapters/unlabelled.py). An image
inside an HDF5 file is addressed 'FILE.hdf5::KEY' wherever a file path goes (helpers/hdf5.py
reads it).

Examples (from the competition's folder, as Kaggle ships it, to a submission):
  python prepare_data.py --source ../isic-2024 --out data/isic2024
  python train.py --data data/isic2024 --neg-per-pos 10 --model efficientnet_lite0 --pretrained \
      --out checkpoints/isic2024.pt
  python evaluate.py checkpoints/isic2024.pt --predict ../isic-2024/test-metadata.csv
"""
import math

import pandas as pd

from helpers import hdf5
from helpers.images import find_images

# --- 1. The layout --------------------------------------------------------------------------------

LAYOUT_COLUMNS = {"isic_id", "target", "patient_id"}


def read_layout(csv, meta):
    """train-metadata.csv's rows in prepare_data.py's common columns: the label is `target`, and
    every image belongs to its patient (the split keeps a patient's lesions together)."""
    return pd.DataFrame({
        "isic_id": meta["isic_id"],
        "image_path": images(csv, meta["isic_id"]),
        "label": meta["target"].str.strip().map({"0": 0, "1": 1}),
        "diagnosis": meta["target"],
        "patient": meta["patient_id"],
    })


def images(csv, image_ids):
    """Kaggle ships the images as one HDF5 file, train-image.hdf5, and optionally unpacked as
    train-image/image/<isic_id>.jpg: the files where that folder exists, else each id's image in
    the HDF5."""
    folders = [csv.parent / "train-image" / "image", csv.parent / "images", csv.parent]
    packed = csv.parent / "train-image.hdf5"
    if folders[0].is_dir() or not packed.exists():
        return find_images(folders, image_ids)
    # Opened once here: a truncated or foreign file stops in one line, not at every image.
    hdf5.handle(packed)
    return [hdf5.address(packed, image_id) for image_id in image_ids]


# --- 2. The measurements --------------------------------------------------------------------------
# Each lesion was measured on the 3D total-body photograph: its long diameter, area, perimeter,
# colour in the L*a*b* space inside and around it, border irregularity, eccentricity, symmetry and
# position. They are known before any diagnosis, so they are evidence. Not evidence:
# tbp_lv_dnn_lesion_confidence, the score of the vendor's own lesion classifier (a model's answer,
# not a measurement), and the columns that record the diagnosis (target, iddx_*, mel_mitotic_index,
# mel_thick_mm, lesion_id).

MEASUREMENT_COLUMNS = ("clin_size_long_diam_mm",)
MEASUREMENT_PREFIX, NOT_EVIDENCE = "tbp_lv_", {"tbp_lv_dnn_lesion_confidence"}


def is_measurement(column):
    return (column in MEASUREMENT_COLUMNS
            or column.startswith(MEASUREMENT_PREFIX) and column not in NOT_EVIDENCE)


def measurements(meta):
    """The measurement columns of a metadata CSV (its text), as numbers: {column: values}."""
    found = {}
    for column in filter(is_measurement, meta.columns):
        values = pd.to_numeric(meta[column], errors="coerce")
        if values.notna().any():  # a word column (tbp_lv_location: "Left Leg") is no measurement
            found[column] = values.to_numpy()
    return found


# --- 3. The ugly-duckling sign: a lesion against the patient's others -----------------------------
# A dermatologist looks for the mole unlike the patient's other moles: it is the suspect one,
# whatever its size in millimetres. So where the images name their patient and some patients have
# several lesions, each measurement also comes as "<column> vs patient": how many of the patient's
# standard deviations it lies from the patient's mean. It is computed on the images being scored,
# patient by patient, so it needs no label and travels to a new patient (benchmarks/ugly_duckling.py
# measures what it is worth).

VS_PATIENT = " vs patient"


def patients(table):
    """The patient of each row (labels.csv's patient, or a metadata CSV's patient_id), or None."""
    return table["patient"] if "patient" in table else table.get("patient_id")


def relative_to_patient(values, patient):
    """Each value minus the mean of its patient's values, in its patient's standard deviations (NaN
    for a patient with fewer than two known values, or all alike)."""
    values = pd.to_numeric(values, errors="coerce").astype(float)
    by_patient = values.groupby(patient)
    return ((values - by_patient.transform("mean"))
            / by_patient.transform("std").replace(0, math.nan)).tolist()

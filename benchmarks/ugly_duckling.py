"""What the "ugly duckling" features add, on tables made for the purpose (no images, seconds on a CPU).

ISIC 2024 photographs every lesion of a patient, and its top solutions found it decisive to compare each
lesion with the patient's others (chapters/isic2024.py: a measurement "vs patient", in the patient's
standard deviations from the patient's mean). No ISIC 2024 data is here, so this measures on tables of its
own making, each lesion with a size in mm, in two worlds:
  ugly duckling  every patient has moles of a size of their own (2 to 10 mm), and a malignant lesion is
                 3 mm larger than that patient's moles: large in millimetres only for its patient;
  plain size     malignant lesions are 3 mm larger than benign ones, whoever the patient (the relative
                 feature adds nothing here: a check that it costs nothing either).
The late fusion (chapters/metadata.py) is fitted on 300 patients' lesions, with an image model that knows
nothing (P = 0.5 for every image), with and without the patient column, and scored on 300 other patients'.

Usage:
  python benchmarks/ugly_duckling.py
"""
import argparse
import random
import statistics
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chapters.metadata import fit_late_fusion, fused_probabilities  # noqa: E402
from train import roc_auc  # noqa: E402


def lesions(world, patients, seed, per_patient=8, malignant_share=0.15):
    """A table of lesions (isic_id, patient, label, clin_size_long_diam_mm) from `patients` patients."""
    rng, rows = random.Random(seed), []
    for patient in range(patients):
        own_size = rng.uniform(2, 10) if world == "ugly duckling" else 5.0
        for lesion in range(per_patient):
            malignant = rng.random() < malignant_share
            size = own_size + 3 * malignant + rng.gauss(0, 1)
            rows.append({"isic_id": f"{seed}-{patient}-{lesion}", "patient": f"P{seed}-{patient}",
                         "label": int(malignant), "clin_size_long_diam_mm": size})
    return pd.DataFrame(rows)


def test_auc(world, with_patient, seed):
    """The AUC on new patients of a fusion fitted on the size alone, or on the size and the size vs patient."""
    train, test = lesions(world, 300, seed), lesions(world, 300, seed + 1000)
    if not with_patient:
        train, test = train.drop(columns="patient"), test.drop(columns="patient")
    table = train.assign(split="train")
    held_out = {"isic_id": train["isic_id"].tolist(), "image_probability": [0.5] * len(train),
                "label": train["label"].tolist()}
    fusion, _ = fit_late_fusion({"val_predictions": held_out}, table)
    return roc_auc(test["label"].tolist(), fused_probabilities(fusion, [0.5] * len(test), test))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=5, help="tables drawn for each world (default 5)")
    draws = range(parser.parse_args().draws)
    print("| world | the size alone | the size and the size against the patient's other lesions |")
    print("|---|---|---|")
    for world in ("ugly duckling", "plain size"):
        alone = [test_auc(world, False, seed) for seed in draws]
        both = [test_auc(world, True, seed) for seed in draws]
        print(f"| {world} | {statistics.mean(alone):.3f} ± {statistics.stdev(alone):.3f} | "
              f"{statistics.mean(both):.3f} ± {statistics.stdev(both):.3f} |")


if __name__ == "__main__":
    main()

"""The 'unlike training' flag and --prevalence, measured on the README's model and test pool.

The model: benchmarks/quality.py's recipe budget-lite0-folds5-fixed, seed 0 (the README's: 5 folds
on a balanced budget of 400 HAM10000 images), trained by quality.py if it is not there yet. A
checkpoint trained before train.py stored the prevalence gets it here, and the novelty statistics
are computed again (a checkpoint may hold an earlier method's), exactly as train.py adds them at
the end of training (chapters/calibration.py record_prevalence, chapters/novelty.py add_statistics).

Scored with evaluate.py, as a user would (each command is printed):
  the test pool   ~1,500 HAM10000 images of lesions the budget never drew from (17 % malignant);
  ISIC UDA        557 dermoscopy images from other clinics (28.5 % malignant);
  (a) photographs that are not dermoscopy: every image file that scikit-image's wheel (the version
      pinned below) ships in skimage/data, each frame of a multi-frame file and each face of
      lfw_subset.npy an image, nothing left out (images that its data module downloads are not
      shipped, so not here);
  (b) the project's own drawn lesions (helpers/synthetic.py, prepare_data.py --source synthetic);
  (c) ISIC UDA.
For each set: the share flagged, and the AUROC of the distance between the test pool and it (1: the
distance puts every image of the set beyond every test image). Then calibration before and after
--prevalence 0.17 (fixed in advance: HAM10000's share, not read from the scored labels) on the test
pool and on ISIC UDA, from the probabilities evaluate.py wrote, moved exactly as --prevalence moves
them (tests/test_calibration.py checks that the two agree).

  python -m pip install scikit-image==0.25.2 && python benchmarks/novelty.py
(a 2-core CPU: about 9 minutes to train, if needed, and 10 to score.)
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from chapters import calibration, novelty  # noqa: E402
from train import roc_auc  # noqa: E402
from model import read_checkpoint  # noqa: E402
from quality import RECIPES, SHARED, prepare_budget, run, trained  # noqa: E402

SKIMAGE = "0.25.2"
RECIPE, SEED, PREVALENCE = "budget-lite0-folds5-fixed", 0, 0.17


def skimage_images(folder):
    """Every image the pinned scikit-image wheel ships in skimage/data, written as PNG files."""
    import skimage
    import skimage.io
    if skimage.__version__ != SKIMAGE:
        sys.exit(f"this benchmark pins scikit-image {SKIMAGE}: "
                 f"python -m pip install scikit-image=={SKIMAGE}")
    folder.mkdir(parents=True, exist_ok=True)
    shipped = Path(skimage.data.__file__).parent
    for path in sorted(shipped.iterdir()):
        if path.suffix in (".png", ".jpg", ".gif", ".tif"):
            stack = skimage.io.imread(path)
        elif path.suffix == ".npy":  # lfw_subset: 200 faces
            stack = np.load(path)
        elif path.suffix == ".npz":  # the motorcycle's disparity map
            stack = np.load(path)["arr_0"]
        else:
            continue
        single = stack.ndim == 2 or (stack.ndim == 3 and stack.shape[-1] in (3, 4))
        for index, array in enumerate([stack] if single else stack):
            Image.fromarray(as_bytes(array)).convert("RGB").save(folder / f"{path.stem}-{index}.png")
    return folder


def as_bytes(array):
    """An image array as 8-bit pixels: numbers other than bytes stretched over 0-255 (their finite
    range; anything not finite, 0)."""
    if array.dtype == np.uint8:
        return array
    array = np.nan_to_num(array.astype(np.float64), nan=0, posinf=0, neginf=0)
    low, high = array.min(), array.max()
    return (255 * (array - low) / max(high - low, 1e-9)).astype(np.uint8)


def with_statistics(checkpoint, data):
    """The checkpoint, with the prevalence added as train.py adds it, and the novelty statistics
    computed again as train.py computes them now (so a checkpoint from an earlier method is
    measured with the present one)."""
    saved = read_checkpoint(checkpoint)
    args = argparse.Namespace(**{**saved["args"], "out": checkpoint, "data": data, "dry_run": False,
                                 "unlike_share": saved["args"].get("unlike_share", 0.01)})
    if "prevalence" not in saved:
        calibration.record_prevalence(args)
    novelty.add_statistics(args, "cpu")
    return checkpoint


def evaluate(checkpoint, out, *options):
    """evaluate.py's predictions.csv for these options (run once: delete OUT to score again)."""
    if not (out / "predictions.csv").exists():
        command = ["evaluate.py", checkpoint, "--out", out, *options]
        print("python " + " ".join(map(str, command)), flush=True)
        run(*command)
    return pd.read_csv(out / "predictions.csv")


def flagged_row(name, scored, pool):
    """The share of a set flagged, and the AUROC of the distance between the test pool and it."""
    distances = pool["distance_from_training"].tolist() + scored["distance_from_training"].tolist()
    auroc = roc_auc([0] * len(pool) + [1] * len(scored), distances)
    return (f"| {name} | {len(scored)} | {scored['unlike_training'].mean():.1%} | "
            f"{scored['distance_from_training'].median():.2f} | {auroc:.3f} |")


def calibration_row(name, scored, prevalence):
    """Mean probability, observed share, ECE and Brier, before and after --prevalence."""
    labels = scored["label"].tolist()
    cells = [name, f"{sum(labels) / len(labels):.3f}"]
    for target in (None, PREVALENCE):
        moved = calibration.to_prevalence(scored["probability_malignant"], {**prevalence,
                                                                            "target": target})
        bins = calibration.reliability_bins(labels, moved)
        intercept, slope = calibration.calibration_intercept_and_slope(labels, moved)
        cells += [f"{sum(moved) / len(moved):.3f}",
                  f"{calibration.expected_calibration_error(bins):.3f}",
                  f"{calibration.brier_score(labels, moved):.3f}", f"{intercept:.2f}",
                  f"{slope:.2f}"]
    return "| " + " | ".join(cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ham", type=Path, default=SHARED / "ham10000")
    parser.add_argument("--uda", type=Path, default=SHARED / "isic_uda")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    args = parser.parse_args()
    data, scored_on = prepare_budget(args.ham, args.uda, args.out, SEED)
    checkpoint, _ = trained(RECIPES[RECIPE][1], data, SEED, None)
    checkpoint = with_statistics(checkpoint, data)
    here = args.out / "novelty"
    synthetic = here / "synthetic"
    if not (synthetic / "labels.csv").exists():
        run("prepare_data.py", "--source", "synthetic", "--out", synthetic,
            "--synthetic-count", 200, "--synthetic-size", 256)
    pool = evaluate(checkpoint, here / "test", "--data", scored_on["test"][0])
    uda = evaluate(checkpoint, here / "uda", "--data", scored_on["UDA"][0])
    photos = evaluate(checkpoint, here / "skimage", "--predict", skimage_images(here / "skimage-images"))
    drawn = evaluate(checkpoint, here / "synthetic-scored", "--predict", synthetic / "images")
    faces = photos["isic_id"].str.startswith("lfw_subset")
    print(f"\n{RECIPE}, seed {SEED}: {checkpoint}\n")
    print("| scored | images | flagged 'unlike training' | median distance | AUROC against the test pool |")
    print("|---|---|---|---|---|")
    for name, scored in (("HAM10000 test pool (false alarms)", pool),
                         (f"scikit-image {SKIMAGE} photographs, all", photos),
                         ("  of which its files (not lfw_subset)", photos[~faces]),
                         ("  of which lfw_subset's 25 px faces", photos[faces]),
                         ("drawn lesions (helpers/synthetic.py)", drawn), ("ISIC UDA", uda)):
        print(flagged_row(name, scored, pool))
    print("\nEvery scikit-image photograph (distance in held-out standard deviations; flagged "
          "beyond the cut-off):\n")
    print(", ".join(f"{row.isic_id} {row.distance_from_training:.1f}{' *' * row.unlike_training}"
                    for row in photos[~faces].itertuples()))
    prevalence = calibration.recorded_prevalence(read_checkpoint(checkpoint))
    print(f"\nCalibration: assumed {prevalence['assumed']:.3f} ({prevalence['because']}); "
          f"--prevalence {PREVALENCE}\n")
    print("| scored | observed share | mean p | ECE | Brier | intercept | slope | "
          f"mean p at {PREVALENCE} | ECE | Brier | intercept | slope |")
    print("|---" * 12 + "|")
    for name, scored in (("HAM10000 test pool", pool), ("ISIC UDA", uda)):
        print(calibration_row(name, scored, prevalence))


if __name__ == "__main__":
    main()

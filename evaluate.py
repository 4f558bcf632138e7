r"""Step 5 of 5: score a checkpoint on held-out images, with every metric computed by hand.

Accuracy alone misleads here: when 17 % of lesions are malignant, calling everything benign scores
83 %. So this reports, at the decision threshold chosen on validation (and at 0.5 for comparison):
  sensitivity (recall)  share of malignant lesions caught    - a missed melanoma is the costly error
  specificity           share of benign lesions left alone   - each false alarm is a biopsy
  balanced accuracy     their mean: 0.5 is chance, whatever the class ratio
  precision, F1, accuracy, and the confusion matrix they all come from
and, over all thresholds at once, the ROC curve and its area (AUC: the chance that a random
malignant image scores above a random benign one), defined in train.py, where validation first
needs them.

The threshold is chosen on the validation images' predictions that the checkpoint carries: the one
with the best balanced accuracy, or with --target-sensitivity the highest that catches that share of
malignant lesions. Thresholds do not travel well to another clinic's images: --threshold-from
chooses it on a few dozen of that clinic's own labelled images instead.
Writes OUT/metrics.json, OUT/predictions.csv, OUT/confusion_matrix.png, OUT/roc.png and
OUT/grad_cam.png (where the model looked, on its most confident hits and misses).

Beyond the lesson, each a chapter that adds its own options (--help lists them): the ISIC 2024
challenge's metric, pAUC above 80 % TPR (partial_auc.py); the metadata (metadata.py: --refit-fusion,
and --age, --sex, --site with --image); scoring images that have no label (unlabelled.py: --image,
--predict); the model as one ONNX file (onnx_export.py: --export); the hardware (hardware.py).

Examples:
  python evaluate.py checkpoints/baseline.pt
  python evaluate.py checkpoints/resnet.pt --data data/uda --split test --out reports/uda
  python evaluate.py checkpoints/resnet.pt --target-sensitivity 0.9 \
      --out reports/resnet-screening                                 # a screening operating point
  python evaluate.py checkpoints/efficientnet_lite0.pt checkpoints/lite0-1.pt \
      --out reports/two-seeds                                        # a two-seed ensemble
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import pandas as pd
import torch
from torch.utils.data import DataLoader

from chapters import calibration, init_from, metadata, novelty, onnx_export, unlabelled
from chapters.grad_cam import draw_grad_cam_gallery
from chapters.hardware import Hardware, autocast, choose_precision, pick_device, worker_count
from chapters.partial_auc import partial_auc
from dataset import CustomDataset, build_transforms, loader_options, read_labels, read_split
from helpers.charts import draw_confusion_matrix, draw_roc
from helpers.files import DataError, Parser, number, save_atomically, stop
from model import load_checkpoint, predict
from train import roc_auc, roc_curve


# --- The metrics at one threshold: the confusion matrix, and what it gives ------------------------
# labels are 0/1 (1 = malignant) and probabilities the model's P(malignant); an image is called
# malignant when its probability is at least the threshold. A ratio with nothing to divide by is
# NaN (undefined).

def ratio(numerator, denominator):
    return numerator / denominator if denominator else math.nan


def confusion_matrix(labels, predictions):
    """[[TN, FP], [FN, TP]]: rows are the truth (benign, malignant), columns the prediction."""
    matrix = [[0, 0], [0, 0]]
    for truth, predicted in zip(labels, predictions):
        matrix[truth][predicted] += 1
    return matrix


def threshold_metrics(labels, probabilities, threshold):
    """The metrics that depend on where the threshold is put."""
    matrix = confusion_matrix(labels, [int(p >= threshold) for p in probabilities])
    (tn, fp), (fn, tp) = matrix
    recall, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn),
            "balanced_accuracy": (recall + specificity) / 2,
            "precision": ratio(tp, tp + fp), "recall": recall, "specificity": specificity,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "confusion_matrix": matrix}


def choose_threshold(labels, probabilities, target_sensitivity=None):
    """The threshold with the best balanced accuracy (0.5 when one class is missing); with
    target_sensitivity, the highest threshold that catches at least that share of
    malignant images."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    if not fpr:
        return 0.5
    if target_sensitivity is not None:
        # The curve climbs as the threshold falls: take the first point high enough.
        return next(t for t, sensitivity in zip(thresholds, tpr)
                    if sensitivity >= target_sensitivity)
    best = max(range(1, len(fpr)), key=lambda i: tpr[i] - fpr[i])  # = 2 * balanced accuracy - 1
    return thresholds[best]


def all_metrics(labels, probabilities, threshold):
    """The report's metrics: those at the threshold and, over every threshold, the ROC AUC and the
    ISIC 2024 challenge's pAUC above 80 % sensitivity (chapters/partial_auc.py)."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    return {**threshold_metrics(labels, probabilities, threshold),
            "auc": roc_auc(labels, probabilities), "pauc_80": partial_auc(fpr, tpr),
            "n": len(labels), "threshold": threshold}


# --- Scoring: one model, or several averaged ------------------------------------------------------

@dataclass
class Models:
    """The checkpoints being evaluated, scoring as one: each member is (model, its checkpoint's
    entries)."""
    members: list
    device: torch.device
    batch_size: int = 64
    workers: int = 0
    precision: str = "fp32"  # or bf16: twice as fast on a CPU with bf16 instructions
    prevalence: dict = None  # the population the probabilities are for (chapters/calibration.py)

    def transform(self, member=0):
        """The preprocessing a member was validated with: its image size and normalisation."""
        info = self.members[member][1]
        return build_transforms(info["img_size"], train=False, mean=info["mean"], std=info["std"])

    def score(self, table, batch_size=None):
        """(P(malignant), the same from the images alone, the labels) for each image of the table
        (read_labels' columns). Each member sees the images as it was validated (its own size,
        normalisation and test-time augmentation) and, if it was trained with metadata, weighs the
        table's age, sex and site beside them (chapters/metadata.py); an ensemble's probability is
        the mean of its members'. A split, a folder to predict and a single image all come here."""
        image_alone, labels = self.score_images(table, batch_size)
        return self.fuse(image_alone, table), mean_over_models(image_alone), labels

    def score_images(self, table, batch_size=None):
        """Each member's P(malignant) from the images alone, and the labels."""
        image_alone = []
        for index, (model, info) in enumerate(self.members):
            loader = DataLoader(CustomDataset(table, self.transform(index)),
                                batch_size or self.batch_size, shuffle=False,
                                **loader_options(self.workers))
            with autocast(self.precision, self.device):
                probabilities, labels = predict(model, loader, self.device, info["tta"])
            image_alone.append(probabilities)
        return image_alone, labels

    def fuse(self, image_alone, table):
        """The members' image-alone probabilities with each one's metadata weighed in, averaged."""
        fused = mean_over_models([metadata.apply(info.get("fusion"), probabilities, table)
                                  for probabilities, (_, info) in zip(image_alone, self.members)])
        return calibration.to_prevalence(fused, self.prevalence)

    def metadata_note(self, table):
        return metadata.note([info.get("fusion") for _, info in self.members], table)


def mean_over_models(probabilities):
    """An ensemble's probability for each image: the mean of its members' (one list per member)."""
    return [sum(per_image) / len(per_image) for per_image in zip(*probabilities)]


def load_models(args, device):
    """The command line's checkpoints, each to be scored as it was validated (unless --no-tta)."""
    members = [load_checkpoint(path, device) for path in args.checkpoints]
    for _, info in members:
        info["tta"] = info["tta"] and not args.no_tta
    return Models(members, device, args.batch_size, worker_count(args.workers, device),
                  choose_precision(args.precision, device))


# --- The decision threshold: chosen on validation, never on test ----------------------------------

def pick_threshold(checkpoints, names, target_sensitivity=None):
    """The decision threshold, chosen on the validation predictions the checkpoints carry (for an
    ensemble, on the mean of its members' predictions): best balanced accuracy, or the target
    sensitivity."""
    validations = [checkpoint["val_predictions"] for checkpoint in checkpoints]
    for name, validation in zip(names, validations):
        if validation["isic_id"] != validations[0]["isic_id"]:
            raise ValueError(f"{name} was validated on other images than {names[0]}: an ensemble's "
                             "threshold needs models trained on the same data folder (for "
                             "instance, with different --seed)")
    # As the models will score: with the metadata weighed in, where they were trained with it.
    mean = mean_over_models([validation.get("fused_probability", validation["image_probability"])
                             for validation in validations])
    return choose_threshold(validations[0]["label"], mean, target_sensitivity)


class Clinic(NamedTuple):
    """--threshold-from: a new clinic's labelled images, scored once by the images alone."""
    table: pd.DataFrame
    image_alone: list  # each member's P(malignant) from the images alone
    labels: list


def score_clinic(data, models):
    table = read_labels(data)
    return Clinic(table, *models.score_images(table))


def decision_threshold(args, models, clinic=None):
    """pick_threshold's, or with --threshold-from one chosen on a new clinic's own labelled images:
    a threshold travels worse than a ranking."""
    if clinic is None:
        return pick_threshold([info for _, info in models.members], args.checkpoints,
                              args.target_sensitivity)
    probabilities = models.fuse(clinic.image_alone, clinic.table)
    threshold = choose_threshold(clinic.labels, probabilities, args.target_sensitivity)
    print(f"threshold {threshold:.3g}, chosen on the {len(clinic.labels)} images of "
          f"{args.threshold_from}")
    return threshold


# --- The report on a split ------------------------------------------------------------------------

def report(args, models, threshold, out):
    """Score a labelled split; print the metrics, write them and the pictures to OUT."""
    data = args.data or models.members[0][1]["args"]["data"]
    table = read_split(data, args.split)
    probabilities, image_alone, labels = models.score(table)
    unlike = novelty.check(models, table)  # how far each image lies from the training images
    metrics = {**all_metrics(labels, probabilities, threshold),
               "auc_image_alone": roc_auc(labels, image_alone)}
    at_half = threshold_metrics(labels, probabilities, 0.5)
    names = " + ".join(f"{path} ({info['model']})"
                       for path, (_, info) in zip(args.checkpoints, models.members))
    print(f"{names} on the {args.split} split of {data}:")
    print_report(metrics, at_half)
    print(f"{models.metadata_note(table)}; the images alone: "
          f"ROC AUC {metrics['auc_image_alone']:.3f}")
    calibrated = calibration.report(labels, probabilities, metrics, models.prevalence,
                                    out / "reliability.png")
    summary = {**without_nan(metrics), "at_threshold_0.5": without_nan(at_half),
               "checkpoints": args.checkpoints,
               "models": [info["model"] for _, info in models.members], "data": str(data),
               "split": args.split, "target_sensitivity": args.target_sensitivity,
               "threshold_from": args.threshold_from, **without_nan(calibrated),
               **novelty.summary(unlike, models), **init_from.seen_by_start(models, table)}
    write_report(out, summary, metrics, table, probabilities, labels, image_alone, unlike)
    model, checkpoint = models.members[0]  # the one whose Grad-CAM is drawn
    draw_grad_cam_gallery(model, CustomDataset(table, models.transform()), probabilities, labels,
                          threshold, out / "grad_cam.png", models.device, checkpoint["mean"],
                          checkpoint["std"])
    print("wrote metrics.json, predictions.csv, confusion_matrix.png, roc.png, reliability.png "
          f"and grad_cam.png to {out}")


def print_report(metrics, at_half):
    print(f"{'':20s}{'threshold ' + format(metrics['threshold'], '.3g'):>18s}"
          f"{'threshold 0.5':>16s}")
    for key in ("accuracy", "balanced_accuracy", "recall", "specificity", "precision", "f1"):
        name = "recall (sensitivity)" if key == "recall" else key.replace("_", " ")
        print(f"{name:20s}{metrics[key]:18.3f}{at_half[key]:16.3f}")
    print(f"ROC AUC {metrics['auc']:.3f}   pAUC above 80% TPR {metrics['pauc_80']:.3f} (of 0.2)   "
          f"n = {metrics['n']}")
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    print(f"confusion matrix at {metrics['threshold']:.3g}:  "
          f"{'called benign':>14s} {'called malignant':>17s}")
    print(f"{'':24s}benign {tn:14d} {fp:17d}\n{'':21s}malignant {fn:14d} {tp:17d}")


def without_nan(metrics):
    """JSON has no NaN: an undefined metric (say, sensitivity with no malignant image)
    becomes null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def write_report(out, report, metrics, table, probabilities, labels, image_alone, unlike=()):
    """metrics.json, predictions.csv and the pictures of the confusion matrix and the ROC curve."""
    save_atomically(out / "metrics.json",
                    lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    predicted = [int(p >= metrics["threshold"]) for p in probabilities]
    predictions = pd.DataFrame({"isic_id": table["isic_id"], "probability_malignant": probabilities,
                                "label": labels, "predicted": predicted,
                                "probability_image_alone": image_alone, **dict(unlike)})
    save_atomically(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    draw_confusion_matrix(metrics["confusion_matrix"], metrics["threshold"],
                          out / "confusion_matrix.png")
    fpr, tpr, _ = roc_curve(labels, probabilities)
    draw_roc(fpr, tpr, metrics, out / "roc.png")


def parse_arguments():
    parser = Parser(__doc__)
    add = parser.add_argument
    add("checkpoints", nargs="+", metavar="checkpoint",
        help="a .pt file written by train.py; with several, their probabilities are averaged")
    add("--data", default=None, help="folder with labels.csv (default: the one trained on)")
    add("--split", default="test", help="train, val or test (default: test)")
    add("--out", default=None, help="folder for the report (default: reports/<checkpoint name>)")
    add("--target-sensitivity", type=number(float, 0, 1, low_open=True), default=None,
        metavar="S", help="use the highest threshold that caught this share of the validation "
                          "images' malignant lesions (e.g. 0.9 for screening) instead of the "
                          "best balanced accuracy")
    add("--threshold-from", default=None, metavar="DATA",
        help="choose the threshold on every labelled image of this prepared folder instead: for "
             "a new clinic, a few dozen of its own images (scored by the same models)")
    add("--no-tta", action="store_true",
        help="score each image once, not as the mean of its 8 rotated and mirrored views the "
             "checkpoint was validated with: 8 times faster, as the ONNX export scores")
    add("--batch-size", type=number(int, 1), default=64, help="images read at a time")
    instead = parser.add_mutually_exclusive_group()  # of the report on a split
    unlabelled.add_options(parser, instead)
    onnx_export.add_options(instead)
    for chapter in (metadata, calibration, Hardware):
        chapter.add_evaluation_options(parser)
    args = parser.parse_args()
    for chapter in (unlabelled, metadata, calibration):
        chapter.refuse_conflicts(args, parser)
    return args


def main():
    args = parse_arguments()
    try:
        models = load_models(args, pick_device(args.device))
        clinic = score_clinic(args.threshold_from, models) if args.threshold_from else None
        if args.refit_fusion:  # the clinic's own priors: from here on, every image is fused so
            metadata.refit_for_clinic(models.members, clinic.table,
                                      mean_over_models(clinic.image_alone), clinic.labels)
            print(f"the metadata's fusion refitted on the {len(clinic.table)} images of "
                  f"{args.threshold_from}")
        threshold = decision_threshold(args, models, clinic)
        if args.export:  # the model as one ONNX file, for use without this project
            return onnx_export.export(models, threshold, args.export)
        # For the population --prevalence names, or the one the model learnt from (said so).
        threshold = calibration.use_prevalence(models, args.prevalence, threshold)
        out = Path(args.out or Path("reports") / Path(args.checkpoints[0]).stem)
        out.mkdir(parents=True, exist_ok=True)
        if args.image:  # one image, with what is known of its patient
            return unlabelled.classify_image(args.image, models, threshold, out, args.age, args.sex,
                                             args.site)
        if args.predict:  # images without labels: OUT/submission.csv
            return unlabelled.write_submission(args.predict, models, out, args.skip_unreadable)
        report(args, models, threshold, out)
    except (DataError, ValueError) as error:
        stop(error)


if __name__ == "__main__":
    main()

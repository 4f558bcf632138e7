r"""Step 5 of 5: score a checkpoint on held-out images, with every metric computed by hand.

Accuracy alone misleads here: when 17 % of lesions are malignant, calling everything benign scores
83 %. So this reports, at the decision threshold chosen on validation (and at 0.5 for comparison):
  sensitivity (recall)  share of malignant lesions caught    - a missed melanoma is the costly error
  specificity           share of benign lesions left alone   - each false alarm is a biopsy
  balanced accuracy     their mean: 0.5 is chance, whatever the class ratio
  precision, F1, accuracy, and the confusion matrix
and, over all thresholds at once:
  ROC AUC               chance that a random malignant image scores above a random benign one
                        (defined in train.py, where validation first needs it)
  pAUC above 80 % TPR   the ISIC 2024 challenge metric: area under the ROC curve where sensitivity
                        is at least 80 %, the only region a screening tool can use (0 to 0.2)

The threshold is chosen on the validation images' predictions that the checkpoint carries: the one
with the best balanced accuracy, or with --target-sensitivity the highest that catches that share of
malignant lesions. Thresholds do not travel well to another clinic's images: --threshold-from
chooses it on a few dozen of that clinic's own labelled images instead, and --refit-fusion refits
the metadata's fusion on them too, for a population whose sites or ages carry melanoma otherwise.
Writes OUT/metrics.json, OUT/predictions.csv, OUT/confusion_matrix.png, OUT/roc.png and
OUT/grad_cam.png (where the model looked, on its most confident hits and misses).

A model trained with metadata (train.py's late fusion) weighs each image's age, sex and body site
beside it, wherever the data has them, and as unknown where it does not: the report names the fields
used, and gives the AUC of the images alone beside the fused one.

--predict scores images without labels instead, exactly as a split is scored, and writes
OUT/submission.csv (isic_id, target: the probability of malignancy), as the ISIC 2024 challenge
takes it. PATH is a metadata CSV (its rows in order; the images in an HDF5 file beside it, as
test-metadata.csv has test-image.hdf5, or as files beside it, in images/ or in test-image/image/),
an HDF5 file (every key, sorted) or a folder of image files (sorted by name, each named after
its file).

--export FILE.onnx writes the model as one ONNX graph instead, for use without this project (ONNX
Runtime runs it from Python, C++, JavaScript...): the image as decoded in, any size (and age, sex
and site, for a model that weighs them), P(malignant) out, scored as --predict --no-tta scores it,
and in its metadata_props what the inputs are. It is checked against PyTorch before it is kept.
--export web/model.onnx is where the page in web/ finds it; the README shows both in use.

Examples:
  python evaluate.py checkpoints/baseline.pt
  python evaluate.py checkpoints/resnet.pt --data data/uda --split test --out reports/uda
  python evaluate.py checkpoints/resnet.pt --image lesion.jpg --age 62 --sex female \
      --site "lower extremity"
  python evaluate.py checkpoints/resnet.pt --target-sensitivity 0.9  # a screening operating point
  python evaluate.py checkpoints/efficientnet_lite0.pt checkpoints/lite0-1.pt  # a two-seed ensemble
  python evaluate.py checkpoints/resnet.pt --image lesion.jpg \
      --threshold-from data/clinic-50                                # a new clinic
  python evaluate.py checkpoints/resnet.pt --predict photos/ --out reports/clinic \
      --threshold-from data/clinic-50 --refit-fusion                 # and its own priors
  python evaluate.py checkpoints/isic2024.pt \
      --predict ../isic-2024/test-metadata.csv                       # a Kaggle submission
  python evaluate.py checkpoints/resnet.pt --predict photos/ --out reports/photos  # an image folder
  python evaluate.py checkpoints/resnet.pt --export resnet.onnx      # for ONNX Runtime
"""
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from chapters import metadata, onnx_export, unlabelled
from chapters.grad_cam import draw_grad_cam_gallery
from chapters.hardware import autocast, choose_precision, pick_device, worker_count
from chapters.metrics import all_metrics, choose_threshold, roc_auc, roc_curve, threshold_metrics
from dataset import CustomDataset, build_transforms, loader_options, read_labels, read_split
from helpers.charts import draw_confusion_matrix, draw_roc
from helpers.files import DataError, Parser, number, save_atomically, stop
from model import load_checkpoint, predict


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
        return mean_over_models([metadata.apply(info.get("fusion"), probabilities, table)
                                 for probabilities, (_, info) in zip(image_alone, self.members)])

    def refit_fusion(self, table):
        """Each member's fusion refitted on these labelled images, a new clinic's (an ensemble's
        members on their mean image-alone probabilities): chapters/metadata.py, refit_fusion.
        Returns the refitted fusions' P(malignant) for these images, and their labels."""
        image_alone, labels = self.score_images(table)
        mean = mean_over_models(image_alone)
        for _, info in self.members:
            if info.get("fusion"):
                info["fusion"] = metadata.refit_fusion(info["fusion"], mean, table, labels)
        return self.fuse(image_alone, table), labels

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
    mean = mean_over_models([validation["probability"] for validation in validations])
    return choose_threshold(validations[0]["label"], mean, target_sensitivity)


def decision_threshold(args, models):
    """pick_threshold's, or with --threshold-from one chosen on a new clinic's own labelled images:
    a threshold travels worse than a ranking."""
    if not args.threshold_from:
        return pick_threshold([info for _, info in models.members], args.checkpoints,
                              args.target_sensitivity)
    table = read_labels(args.threshold_from)
    if args.refit_fusion:  # this clinic's population: its own base rate and metadata priors
        probabilities, labels = models.refit_fusion(table)
        print(f"the metadata's fusion refitted on the {len(table)} images of {args.threshold_from}")
    else:
        probabilities, _, labels = models.score(table)
    threshold = choose_threshold(labels, probabilities, args.target_sensitivity)
    print(f"threshold {threshold:.3g}, chosen on the {len(labels)} images of {args.threshold_from}")
    return threshold


# --- The report on a split ------------------------------------------------------------------------

def report(args, models, threshold, out):
    """Score a labelled split; print the metrics, write them and the pictures to OUT."""
    data = args.data or models.members[0][1]["args"]["data"]
    table = read_split(data, args.split)
    probabilities, image_alone, labels = models.score(table)
    metrics = {**all_metrics(labels, probabilities, threshold),
               "auc_image_alone": roc_auc(labels, image_alone)}
    at_half = threshold_metrics(labels, probabilities, 0.5)
    names = " + ".join(f"{path} ({info['model']})"
                       for path, (_, info) in zip(args.checkpoints, models.members))
    print(f"{names} on the {args.split} split of {data}:")
    print_report(metrics, at_half)
    print(f"{models.metadata_note(table)}; the images alone: "
          f"ROC AUC {metrics['auc_image_alone']:.3f}")
    summary = {**without_nan(metrics), "at_threshold_0.5": without_nan(at_half),
               "checkpoints": args.checkpoints,
               "models": [info["model"] for _, info in models.members], "data": str(data),
               "split": args.split, "target_sensitivity": args.target_sensitivity,
               "threshold_from": args.threshold_from}
    write_report(out, summary, metrics, table, probabilities, labels, image_alone)
    model, checkpoint = models.members[0]  # the one whose Grad-CAM is drawn
    draw_grad_cam_gallery(model, CustomDataset(table, models.transform()), probabilities, labels,
                          threshold, out / "grad_cam.png", models.device, checkpoint["mean"],
                          checkpoint["std"])
    print("wrote metrics.json, predictions.csv, confusion_matrix.png, roc.png and "
          f"grad_cam.png to {out}")


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


def write_report(out, report, metrics, table, probabilities, labels, image_alone):
    """metrics.json, predictions.csv and the pictures of the confusion matrix and the ROC curve."""
    save_atomically(out / "metrics.json",
                    lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    predicted = [int(p >= metrics["threshold"]) for p in probabilities]
    predictions = pd.DataFrame({"isic_id": table["isic_id"], "probability_malignant": probabilities,
                                "label": labels, "predicted": predicted,
                                "probability_image_alone": image_alone})
    save_atomically(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    draw_confusion_matrix(metrics["confusion_matrix"], metrics["threshold"],
                          out / "confusion_matrix.png")
    fpr, tpr, _ = roc_curve(labels, probabilities)
    draw_roc(fpr, tpr, metrics, out / "roc.png")


def parse_arguments():
    parser = Parser(__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                        help="a .pt file written by train.py; with several, "
                             "their probabilities are averaged")
    parser.add_argument("--data", default=None,
                        help="folder with labels.csv (default: the one trained on)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--out", default=None,
                        help="folder for the report (default: reports/<checkpoint name>)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--image", default=None, help="classify this one image instead")
    given.add_argument("--predict", default=None, metavar="PATH",
                       help="write OUT/submission.csv (isic_id, target) for images without labels: "
                            "a metadata CSV, an HDF5 file or a folder of images (see above)")
    given.add_argument("--export", default=None, metavar="FILE.onnx",
                       help="write the model as one ONNX graph, for ONNX Runtime (see above)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="with --predict: score the images that can be read, leave the others "
                             "out of submission.csv and list them in OUT/unreadable.csv (by "
                             "default any unreadable image stops the run, as a submission needs "
                             "every row)")
    parser.add_argument("--no-tta", action="store_true",
                        help="score each image once, not as the mean of its 8 rotated and mirrored "
                             "views the checkpoint was validated with: 8 times faster, as the ONNX "
                             "export scores")
    parser.add_argument("--age", default=None,
                        help="with --image: the patient's age in years, if known")
    parser.add_argument("--sex", default=None, help="with --image: female or male, if known")
    sites = ", ".join(sorted(set(metadata.SITES.values())))
    parser.add_argument("--site", default=None,
                        help=f"with --image: the body site, in the ISIC Archive's words ({sites}) "
                             "or HAM10000's, if known")
    parser.add_argument("--target-sensitivity", type=number(float, 0, 1, low_open=True),
                        default=None, metavar="S",
                        help="use the highest threshold that caught this share of the validation "
                             "images' malignant lesions (e.g. 0.9 for screening) instead of the "
                             "best balanced accuracy")
    parser.add_argument("--threshold-from", default=None, metavar="DATA",
                        help="choose the threshold on every labelled image of this prepared folder "
                             "instead: for a new clinic, a few dozen of its own images (scored by "
                             "the same models)")
    parser.add_argument("--refit-fusion", action="store_true",
                        help="with --threshold-from: refit the metadata's fusion on those images "
                             "too (the bias, and each weight held near its trained value), for a "
                             "clinic whose population differs from the training one")
    parser.add_argument("--batch-size", type=number(int, 1), default=64,
                        help="images read at a time")
    parser.add_argument("--workers", type=number(int, 0), default=None,
                        help="DataLoader worker processes (default: as train.py chooses them)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="bf16: score in bfloat16 autocast, about twice as fast on a CPU with "
                             "AVX512-BF16 or AMX, probabilities a little different (docs/SPEED.md)")
    args = parser.parse_args()
    if args.skip_unreadable and not args.predict:
        parser.error("--skip-unreadable goes with --predict")
    if args.refit_fusion and not args.threshold_from:
        parser.error("--refit-fusion needs --threshold-from DATA, the labelled images to refit on")
    return args


def main():
    args = parse_arguments()
    try:
        models = load_models(args, pick_device(args.device))
        threshold = decision_threshold(args, models)
        if args.export:  # the model as one ONNX file, for use without this project
            return onnx_export.export(models, threshold, args.export)
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

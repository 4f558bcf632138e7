"""Step 5 of 5: score a checkpoint on held-out images, with every metric computed by hand.

Accuracy alone misleads here: when 17 % of lesions are malignant, calling everything benign scores
83 %. So this reports, at the decision threshold chosen on validation (and at 0.5 for comparison):
  sensitivity (recall)  share of malignant lesions caught      - a missed melanoma is the costly error
  specificity           share of benign lesions left alone     - each false alarm is a biopsy
  balanced accuracy     their mean: 0.5 is chance, whatever the class ratio
  precision, F1, accuracy, and the confusion matrix
and, over all thresholds at once:
  ROC AUC               chance that a random malignant image scores above a random benign one
                        (defined in train.py, where validation first needs it)
  pAUC above 80 % TPR   the ISIC 2024 challenge metric: area under the ROC curve where sensitivity
                        is at least 80 %, the only region a screening tool can use (0 to 0.2)

The threshold is chosen on the validation images' predictions that the checkpoint carries: the one
with the best balanced accuracy, or with --target-sensitivity the highest that catches that share of
malignant lesions. Thresholds do not travel well to another clinic's images: --threshold-from chooses
it on a few dozen of that clinic's own labelled images instead. Writes OUT/metrics.json,
OUT/predictions.csv, OUT/confusion_matrix.png, OUT/roc.png and OUT/grad_cam.png (where the model
looked, on its most confident hits and misses).

A model trained with metadata (train.py's late fusion) weighs each image's age, sex and body site beside
it, wherever the data has them, and as unknown where it does not: the report names the fields used, and
gives the AUC of the images alone beside the fused one.

--predict scores images without labels instead, exactly as a split is scored, and writes
OUT/submission.csv (isic_id, target: the probability of malignancy), as the ISIC 2024 challenge takes
it. PATH is a metadata CSV (its rows in order; the images in an HDF5 file beside it, as test-metadata.csv
has test-image.hdf5, or as files beside it, in images/ or in test-image/image/), an HDF5 file (every key,
sorted) or a folder of image files (sorted by name, each named after its file).

--export FILE.onnx writes the model as one ONNX graph instead, for use without this project (ONNX Runtime
runs it from Python, C++, JavaScript...): normalised images in (and the metadata features, for a model
that weighs them), P(malignant) out, a fold ensemble's models averaged inside, and in its metadata_props
all it takes to feed it. It is checked against PyTorch before it is kept. The README shows it in use.

Examples:
  python evaluate.py checkpoints/baseline.pt
  python evaluate.py checkpoints/resnet.pt --data data/uda --split test --out reports/uda
  python evaluate.py checkpoints/resnet.pt --image lesion.jpg --age 62 --sex female --site "lower extremity"
  python evaluate.py checkpoints/resnet.pt --target-sensitivity 0.9    # a screening operating point
  python evaluate.py checkpoints/efficientnet_lite0.pt checkpoints/lite0-1.pt   # an ensemble of two seeds
  python evaluate.py checkpoints/resnet.pt --image lesion.jpg --threshold-from data/clinic-50   # a new clinic
  python evaluate.py checkpoints/isic2024.pt --predict ../isic-2024/test-metadata.csv   # a Kaggle submission
  python evaluate.py checkpoints/resnet.pt --predict photos/ --out reports/photos     # a folder of images
  python evaluate.py checkpoints/resnet.pt --export resnet.onnx                       # for ONNX Runtime
"""
import json
import math
import os
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader

from dataset import (CustomDataset, build_transforms, loader_options, metadata_fields, read_labels, read_split,
                     worker_count)
from helpers import hdf5
from helpers.charts import draw_confusion_matrix, draw_roc, to_picture
from helpers.files import DataError, Parser, number, save_atomically, save_image, stop
from helpers.grad_cam import draw_grad_cam_gallery, grad_cam, overlay
from helpers.onnx_export import export_onnx
from model import Scorer, fused_probabilities, load_checkpoint, pick_device
from prepare_data import (IMAGE_SUFFIXES, SEXES, SITES, clean_age, clean_word, find_images, read_evidence,
                          read_metadata, refuse_paths_outside)
from train import predict, roc_auc, roc_curve


# --- Metrics, by hand ------------------------------------------------------------------------------
# labels are 0/1 (1 = malignant), probabilities are the model's P(malignant); an image is called
# malignant when its probability is at least the threshold. A ratio with nothing to divide by is NaN.
# The ROC curve and its area are train.py's (roc_curve, roc_auc): validation needs them first.

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
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn), "balanced_accuracy": (recall + specificity) / 2,
            "precision": ratio(tp, tp + fp), "recall": recall, "specificity": specificity,
            "f1": ratio(2 * tp, 2 * tp + fp + fn), "confusion_matrix": matrix}


def partial_auc(labels, probabilities, min_tpr=0.8):
    """Area between the ROC curve and the line TPR = min_tpr, where the curve is above it (0 to 1 - min_tpr)."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    if not fpr:
        return math.nan
    area = 0.0
    for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]):
        h0, h1 = y0 - min_tpr, y1 - min_tpr  # heights above the line at both ends of a segment
        if h0 >= 0:
            area += (x1 - x0) * (h0 + h1) / 2
        elif h1 > 0:  # the segment crosses the line: only the triangle above it counts
            area += (x1 - x0) * h1 / (h1 - h0) * h1 / 2
    return area


def choose_threshold(labels, probabilities, target_sensitivity=None):
    """The threshold with the best balanced accuracy (0.5 when one class is missing); with
    target_sensitivity, the highest threshold that catches at least that share of malignant images."""
    fpr, tpr, thresholds = roc_curve(labels, probabilities)
    if not fpr:
        return 0.5
    if target_sensitivity is not None:  # the curve climbs as the threshold falls: take the first point high enough
        return next(t for t, sensitivity in zip(thresholds, tpr) if sensitivity >= target_sensitivity)
    best = max(range(1, len(fpr)), key=lambda i: tpr[i] - fpr[i])  # = 2 * balanced accuracy - 1
    return thresholds[best]


def all_metrics(labels, probabilities, threshold):
    return {**threshold_metrics(labels, probabilities, threshold), "auc": roc_auc(labels, probabilities),
            "pauc_80": partial_auc(labels, probabilities), "n": len(labels), "threshold": threshold}


# --- Scoring: one model, or several averaged -------------------------------------------------------------

def evaluation_transform(checkpoint):
    """The preprocessing the checkpoint's model was validated with: its image size and normalisation."""
    return build_transforms(checkpoint["img_size"], train=False, mean=checkpoint["mean"], std=checkpoint["std"])


def score(members, table, batch_size, workers, device):
    """P(malignant) for each image of the table (labels.csv's columns), and the labels: each member sees
    the images as it was validated (its own size, normalisation and test-time augmentation) and, if it was
    trained with metadata, weighs the table's age, sex and site beside them; an ensemble's probability is
    the mean of its members'. A split, a folder to predict and a single image all come here."""
    per_member, labels = image_scores(members, table, batch_size, workers, device)
    return with_metadata(members, per_member, table), labels


def image_scores(members, table, batch_size, workers, device):
    """Each member's P(malignant) for each image from the pixels alone (a list per member), and the labels."""
    probabilities = []
    for model, info in members:
        loader = DataLoader(CustomDataset(table, evaluation_transform(info)), batch_size, shuffle=False,
                            **loader_options(workers))
        member_probabilities, labels = predict(model, loader, device, info["tta"])
        probabilities.append(member_probabilities)
    return probabilities, labels


def with_metadata(members, per_member, table):
    """The ensemble's probabilities, each member's fused with the metadata as it learnt (model.LateFusion)."""
    return mean_over_models([fused_probabilities(info["fusion"], probabilities, table) if info.get("fusion")
                             else probabilities for (_, info), probabilities in zip(members, per_member)])


def metadata_note(members, table):
    """One line: which metadata the models weigh, and how much of it this data has."""
    fusion = next((info["fusion"] for _, info in members if info.get("fusion")), None)
    if fusion is None:
        return "metadata: not used (the models were trained without it)"
    fields = metadata_fields(fusion)
    present = [field for field in fields if field in table and table[field].notna().any()]
    if not present:
        return (f"note: this data has no {', '.join(fields)}; the models score it from the images, "
                "as if that metadata were unknown")
    known = [f"{field} (known for {int(table[field].notna().sum())} of {len(table)})" for field in present]
    absent = [field for field in fields if field not in present]
    return (f"metadata used: {', '.join(known)}" +
            (f"; not in this data, so unknown: {', '.join(absent)}" if absent else ""))


def mean_over_models(probabilities):
    """An ensemble's probability for each image: the mean of its members' (one list per member)."""
    return [sum(per_image) / len(per_image) for per_image in zip(*probabilities)]


def pick_threshold(checkpoints, names, target_sensitivity=None):
    """The decision threshold, chosen on the validation predictions the checkpoints carry (for an ensemble,
    on the mean of its members' predictions): best balanced accuracy, or the target sensitivity."""
    validations = [checkpoint["val_predictions"] for checkpoint in checkpoints]
    for name, validation in zip(names, validations):
        if validation["isic_id"] != validations[0]["isic_id"]:
            raise ValueError(f"{name} was validated on other images than {names[0]}: an ensemble's threshold "
                             "needs models trained on the same data folder (for instance, with different --seed)")
    mean = mean_over_models([validation["probability"] for validation in validations])
    return choose_threshold(validations[0]["label"], mean, target_sensitivity)


# --- Reporting ---------------------------------------------------------------------------------------------

def print_report(metrics, at_half):
    print(f"{'':20s}{'threshold ' + format(metrics['threshold'], '.3g'):>18s}{'threshold 0.5':>16s}")
    for key in ("accuracy", "balanced_accuracy", "recall", "specificity", "precision", "f1"):
        name = "recall (sensitivity)" if key == "recall" else key.replace("_", " ")
        print(f"{name:20s}{metrics[key]:18.3f}{at_half[key]:16.3f}")
    print(f"ROC AUC {metrics['auc']:.3f}   pAUC above 80% TPR {metrics['pauc_80']:.3f} (of 0.2)   "
          f"n = {metrics['n']}")
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    print(f"confusion matrix at {metrics['threshold']:.3g}:  {'called benign':>14s} {'called malignant':>17s}")
    print(f"{'':24s}benign {tn:14d} {fp:17d}\n{'':21s}malignant {fn:14d} {tp:17d}")


def without_nan(metrics):
    """JSON has no NaN: an undefined metric (say, sensitivity with no malignant image) becomes null."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}


def write_report(out, report, metrics, table, probabilities, labels, image_alone):
    """metrics.json, predictions.csv and the pictures of the confusion matrix and the ROC curve."""
    save_atomically(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    predictions = pd.DataFrame({"isic_id": table["isic_id"], "probability_malignant": probabilities,
                                "label": labels, "predicted": [int(p >= metrics["threshold"]) for p in probabilities],
                                "probability_image_alone": image_alone})
    save_atomically(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    draw_confusion_matrix(metrics["confusion_matrix"], metrics["threshold"], out / "confusion_matrix.png")
    fpr, tpr, _ = roc_curve(labels, probabilities)
    draw_roc(fpr, tpr, metrics, out / "roc.png")


def classify_image(path, members, threshold, out, device, age=None, sex=None, site=None):
    """One image, scored exactly as a split is (same transform, TTA, ensemble and metadata), and its Grad-CAM."""
    table = pd.DataFrame({"isic_id": [Path(path).stem], "load_path": [str(path)], "label": [0],
                          "age": clean_age([age]), "sex": clean_word([sex], SEXES), "site": clean_word([site], SITES)})
    for name, given, cleaned in (("age", age, table["age"][0]), ("sex", sex, table["sex"][0]),
                                 ("site", site, table["site"][0])):
        if given is not None and pd.isna(cleaned):
            print(f"note: --{name} {given!r} is not a value the models know; scored as unknown")
    print(metadata_note(members, table))
    (probability,), _ = score(members, table, 1, 0, device)
    verdict = "malignant" if probability >= threshold else "benign"
    print(f"{path}: P(malignant) = {probability:.3f} -> {verdict} (threshold {threshold:.3g})")
    model, checkpoint = members[0]
    tensor = CustomDataset(table, evaluation_transform(checkpoint))[0][0].to(device)
    picture = to_picture(tensor, checkpoint["mean"], checkpoint["std"])
    cam = grad_cam(model, tensor, towards=int(probability >= threshold))  # the evidence for its answer
    save_image(overlay(picture, cam), out / f"grad_cam_{Path(path).stem}.png")
    print(f"where it saw {verdict} evidence: {out / f'grad_cam_{Path(path).stem}.png'}")


# --- Predicting: a submission for images without labels -------------------------------------------------

def prediction_table(path):
    """The images that --predict scores, in the submission's order, as score() takes them: isic_id,
    load_path, label (0: unknown, not read) and, from a metadata CSV, every column of its rows, its
    evidence (age, sex, site, measurements) cleaned for the models that weigh it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a metadata CSV, an HDF5 file or a folder of images")
    if path.is_dir():
        files = sorted(file for file in path.iterdir() if file.suffix.lower() in IMAGE_SUFFIXES)
        table = pd.DataFrame({"isic_id": [file.stem for file in files], "load_path": list(map(str, files))})
        twice = table["isic_id"][table["isic_id"].duplicated()].tolist()
        if twice:  # a.jpg and a.png: one id, two rows of a submission
            raise DataError(f"{path}: two image files are named {twice[0]!r}; rename or remove one of them")
    elif path.suffix.lower() in hdf5.SUFFIXES:
        keys = hdf5.keys(path)
        table = pd.DataFrame({"isic_id": keys, "load_path": [hdf5.address(path, key) for key in keys]})
    else:
        table = csv_images(path, read_metadata(path))
    if table.empty:
        raise DataError(f"{path} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))} files, or HDF5 keys); "
                        "point --predict at the images")
    return table.assign(label=0)


def csv_images(csv, meta):
    """A metadata CSV's rows with the load_path of each row's image: in the HDF5 file beside it, if any
    (see helpers/hdf5.py), else <isic_id>.jpg (.png ...) beside it, in images/ or in test-image/image/.
    A row without an image stops the run: a submission lacking a row would be refused, or scored wrong."""
    if "isic_id" not in meta:
        raise DataError(f"{csv} has no isic_id column (it has: {', '.join(meta.columns)}); --predict reads a "
                        "metadata CSV with one row per image, named by isic_id")
    ids, packed = meta["isic_id"].fillna(""), hdf5.beside(csv)
    if packed:
        paths = [hdf5.address(packed, image_id) for image_id in ids]
        missing = ~ids.isin(set(hdf5.keys(packed)))
    else:
        paths = find_images([csv.parent, csv.parent / "images", csv.parent / "test-image" / "image"], ids)
        refuse_paths_outside(pd.DataFrame({"isic_id": ids, "image_path": paths}), csv)
        missing = ~pd.Series(map(os.path.exists, paths), index=meta.index)
    if missing.any():
        row = missing.idxmax()
        raise DataError(f"{csv}, line {row + 2}: no image {ids[row]!r} in {packed or csv.parent} "
                        f"({missing.sum()} such rows); add the images, or remove those rows")
    return meta.assign(load_path=paths, **read_evidence(meta))  # its metadata, cleaned as prepare_data.py does


def write_submission(members, table, out, batch_size, workers, device):
    """OUT/submission.csv: isic_id and target, each image's P(malignant), scored as a split is."""
    print(metadata_note(members, table))
    probabilities, _ = score(members, table, batch_size, workers, device)
    submission = pd.DataFrame({"isic_id": table["isic_id"], "target": probabilities})
    save_atomically(out / "submission.csv", lambda tmp: submission.to_csv(tmp, index=False))
    print(f"wrote {out / 'submission.csv'}: P(malignant) of {len(submission)} images")


# --- Exporting: the model as one ONNX file, for use outside this project ----------------------------------
# What the graph's inputs must be, in words: its metadata_props carry this, so that the file is all a user needs.
RESIZE_RULE = ("the image in RGB; its shorter side resized to image_size (bilinear, antialiased) and the central "
               "image_size x image_size square cropped; pixels scaled to [0, 1], then each channel minus mean, "
               "divided by std. Input 'image': float32, shape (images, 3, image_size, image_size)")
METADATA_RULE = ("input 'metadata': float32, shape (images, features), the features in the order of "
                 "metadata_features, NaN where unknown. A plain name (age in years, a measurement in its CSV's "
                 "unit) is the number; 'column: word' is 1 when the image's column is that word (a site ending "
                 "in 'torso' is also 'torso'), 0 when it is another word of the list, NaN when unknown or another "
                 "word; 'column vs patient' is the value minus the mean of that column over the same patient's "
                 "images being scored, divided by their standard deviation")


def example_images(info, generator=None, count=5):
    """Random images as the model sees them (through its evaluation transform): to trace and check an
    export on."""
    transform, size = evaluation_transform(info), info["img_size"]
    pixels = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return torch.stack([transform(image) for image in pixels])


def export(members, threshold, path):
    """FILE.onnx: the checkpoint's network, its metadata fusion and how to feed them (helpers/onnx_export.py)."""
    if len(members) > 1:
        raise ValueError("--export writes one checkpoint (a --folds run's models are one file already); give one")
    model, info = members[0]
    fusion, size, folds = info.get("fusion"), info["img_size"], info.get("folds", 1)
    # Example inputs, to trace the network and to check ONNX Runtime against PyTorch: random pixels, and
    # metadata around its training values with some of it missing.
    generator = torch.Generator().manual_seed(0)
    inputs = {"image": example_images(info, generator)}
    props = {"model": info["model"] + (f", the mean of {folds} cross-validation models" if folds > 1 else ""),
             "image_size": str(size), "mean": json.dumps(list(info["mean"])), "std": json.dumps(list(info["std"])),
             "resize": RESIZE_RULE, "threshold": f"{threshold:.6g}",
             "output": "'probability': P(malignant) of each image, from one view (evaluate.py --predict --no-tta); "
                       "malignant when at least threshold, chosen on the validation images"}
    if fusion:
        features = torch.tensor(fusion["centre"]) + torch.randn(len(inputs["image"]), len(fusion["centre"]),
                                                                generator=generator)
        features[0, ::2], features[1] = math.nan, math.nan
        inputs["metadata"] = features
        props.update(metadata_features=json.dumps(fusion["features"]), metadata=METADATA_RULE)
    export_onnx(Scorer(model.cpu(), fusion), inputs, props, path)
    print(f"wrote {path}: {props['model']}, {size} px" + (f", with {len(fusion['features'])} metadata features"
                                                          if fusion else "") + "; ONNX Runtime checked against PyTorch")


def parse_arguments():
    parser = Parser(__doc__)
    parser.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                        help="a .pt file written by train.py; with several, their probabilities are averaged")
    parser.add_argument("--data", default=None, help="folder with labels.csv (default: the one trained on)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--out", default=None, help="folder for the report (default: reports/<checkpoint name>)")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--image", default=None, help="classify this one image instead")
    given.add_argument("--predict", default=None, metavar="PATH",
                       help="write OUT/submission.csv (isic_id, target) for images without labels: a metadata "
                            "CSV, an HDF5 file or a folder of images (see above)")
    given.add_argument("--export", default=None, metavar="FILE.onnx",
                       help="write the model as one ONNX graph, for ONNX Runtime (see above)")
    parser.add_argument("--no-tta", action="store_true",
                        help="score each image once, not as the mean of its 8 rotated and mirrored views the "
                             "checkpoint was validated with: 8 times faster, as the ONNX export scores")
    parser.add_argument("--age", default=None, help="with --image: the patient's age in years, if known")
    parser.add_argument("--sex", default=None, help="with --image: female or male, if known")
    parser.add_argument("--site", default=None, help="with --image: the body site, in the ISIC Archive's words "
                        f"({', '.join(sorted(set(SITES.values())))}) or HAM10000's, if known")
    parser.add_argument("--target-sensitivity", type=number(float, 0, 1, low_open=True), default=None, metavar="S",
                        help="use the highest threshold that caught this share of the validation images' "
                             "malignant lesions (e.g. 0.9 for screening) instead of the best balanced accuracy")
    parser.add_argument("--threshold-from", default=None, metavar="DATA",
                        help="choose the threshold on every labelled image of this prepared folder instead: for a "
                             "new clinic, a few dozen of its own images (scored by the same models)")
    parser.add_argument("--batch-size", type=number(int, 1), default=64, help="images read at a time")
    parser.add_argument("--workers", type=number(int, 0), default=None,
                        help="DataLoader worker processes (default: as train.py chooses them)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    return parser.parse_args()


def main():
    args = parse_arguments()
    device = pick_device(args.device)
    try:
        members = [load_checkpoint(path, device) for path in args.checkpoints]
        for _, info in members:
            info["tta"] = info["tta"] and not args.no_tta
        threshold = pick_threshold([info for _, info in members], args.checkpoints, args.target_sensitivity)
        if args.threshold_from:  # thresholds do not travel: a new clinic sets its own on its own images
            probabilities, labels = score(members, read_labels(args.threshold_from), args.batch_size, 0, device)
            threshold = choose_threshold(labels, probabilities, args.target_sensitivity)
            print(f"threshold {threshold:.3g}, chosen on the {len(labels)} images of {args.threshold_from}")
        if args.export:
            return export(members, threshold, args.export)
        out = Path(args.out or Path("reports") / Path(args.checkpoints[0]).stem)
        out.mkdir(parents=True, exist_ok=True)
        if args.image:
            return classify_image(args.image, members, threshold, out, device, args.age, args.sex, args.site)
        if args.predict:
            return write_submission(members, prediction_table(args.predict), out, args.batch_size,
                                    worker_count(args.workers, device), device)
        data = args.data or members[0][1]["args"]["data"]
        table = read_split(data, args.split)
        per_member, labels = image_scores(members, table, args.batch_size, worker_count(args.workers, device), device)
    except (DataError, ValueError) as error:
        stop(error)
    probabilities, image_alone = with_metadata(members, per_member, table), mean_over_models(per_member)

    metrics = {**all_metrics(labels, probabilities, threshold), "auc_image_alone": roc_auc(labels, image_alone)}
    at_half = threshold_metrics(labels, probabilities, 0.5)
    names = " + ".join(f"{path} ({info['model']})" for path, (_, info) in zip(args.checkpoints, members))
    print(f"{names} on the {args.split} split of {data}:")
    print_report(metrics, at_half)
    print(f"{metadata_note(members, table)}; the images alone: ROC AUC {metrics['auc_image_alone']:.3f}")
    report = {**without_nan(metrics), "at_threshold_0.5": without_nan(at_half), "checkpoints": args.checkpoints,
              "models": [info["model"] for _, info in members], "data": str(data), "split": args.split,
              "target_sensitivity": args.target_sensitivity, "threshold_from": args.threshold_from}
    write_report(out, report, metrics, table, probabilities, labels, image_alone)
    model, checkpoint = members[0]  # the one whose Grad-CAM is drawn
    draw_grad_cam_gallery(model, CustomDataset(table, evaluation_transform(checkpoint)), probabilities, labels,
                          threshold, out / "grad_cam.png", device, checkpoint["mean"], checkpoint["std"])
    print(f"wrote metrics.json, predictions.csv, confusion_matrix.png, roc.png and grad_cam.png to {out}")


if __name__ == "__main__":
    main()

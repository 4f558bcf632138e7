"""Step 5 of 5: score a checkpoint on held-out images, with every metric computed by hand.

Accuracy alone misleads here: when 17 % of lesions are malignant, calling everything benign scores
83 %. So this reports, at the decision threshold chosen on validation (and at 0.5 for comparison):
  sensitivity (recall)  share of malignant lesions caught      - a missed melanoma is the costly error
  specificity           share of benign lesions left alone     - each false alarm is a biopsy
  balanced accuracy     their mean: 0.5 is chance, whatever the class ratio
  precision, F1, accuracy, and the confusion matrix
and, over all thresholds at once:
  ROC AUC               chance that a random malignant image scores above a random benign one
  pAUC above 80 % TPR   the ISIC 2024 challenge metric: area under the ROC curve where sensitivity
                        is at least 80 %, the only region a screening tool can use (0 to 0.2)

Writes OUT/metrics.json, OUT/predictions.csv, OUT/confusion_matrix.png, OUT/roc.png and OUT/grad_cam.png
(where the model looked, on its most confident hits and misses).

Examples:
  python evaluate.py checkpoints/baseline.pt
  python evaluate.py checkpoints/resnet18.pt --data data/uda --split test --out reports/uda
  python evaluate.py checkpoints/resnet18.pt --image lesion.jpg
  python evaluate.py checkpoints/resnet18.pt --target-sensitivity 0.9    # a screening operating point
  python evaluate.py checkpoints/seed0.pt checkpoints/seed1.pt checkpoints/seed2.pt   # an ensemble
"""
import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torch.utils.data import DataLoader

from dataset import (CustomDataset, DataError, Progress, build_transforms, load_image, loader_options,
                     save_atomically, save_image, to_picture, worker_count)
from model import load_checkpoint, pick_device


# --- Metrics, by hand ------------------------------------------------------------------------------
# labels are 0/1 (1 = malignant), probabilities are the model's P(malignant); an image is called
# malignant when its probability is at least the threshold. A ratio with nothing to divide by is NaN.

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


def roc_curve(labels, probabilities):
    """The ROC curve as (fpr, tpr, thresholds), from (0, 0) to (1, 1).

    Lower the threshold past each distinct score in turn and count who is now called malignant. Images
    with equal scores cross together, so a tie moves the curve diagonally: that is how ties count half.
    """
    positives = sum(labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return [], [], []  # with one class there is no curve
    ranked = sorted(zip(probabilities, labels), reverse=True)
    fpr, tpr, thresholds = [0.0], [0.0], [math.inf]
    true_pos = false_pos = 0
    for i, (score, label) in enumerate(ranked):
        true_pos += label
        false_pos += 1 - label
        if i + 1 == len(ranked) or ranked[i + 1][0] != score:  # the last of a run of equal scores
            fpr.append(false_pos / negatives)
            tpr.append(true_pos / positives)
            thresholds.append(score)
    return fpr, tpr, thresholds


def roc_auc(labels, probabilities):
    """Area under the ROC curve, by the trapezoid rule; NaN when only one class is present."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    if not fpr:
        return math.nan
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))


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


# --- Running the model -------------------------------------------------------------------------------

def dihedral_views(images):
    """The 8 ways to rotate by quarter turns and mirror a batch: a lesion has no "up" and no "left"."""
    for flipped in (images, images.flip(-1)):
        for quarter_turns in range(4):
            yield flipped.rot90(quarter_turns, dims=(-2, -1))


@torch.inference_mode()  # no gradients: faster, and less memory
def predict(model, loader, device, tta=False):
    """P(malignant) for every image of the loader, in order, and the true labels.

    With tta (test-time augmentation), each image's probability is the mean over its 8 dihedral views:
    8 times the work, for a score that depends less on how the lesion happened to lie under the camera.
    """
    model.eval()
    probabilities, labels, progress = [], [], Progress("scored", len(loader.dataset))
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        views = list(dihedral_views(images)) if tta else [images]
        probabilities += torch.stack([model(view).float().softmax(dim=1)[:, 1] for view in views]).mean(0).tolist()
        labels += targets.tolist()
        progress.update(len(labels))
    progress.close()
    return probabilities, labels


# --- Where the model looked: Grad-CAM ------------------------------------------------------------------
# Grad-CAM (Selvaraju et al., ICCV 2017): take the feature maps of the last convolution, weight each map
# by how much the malignant log-odds rise when that map rises (its gradient, averaged over the map), add
# them up and keep the positive part. Bright regions are the evidence the model used for "malignant".

def grad_cam(model, image):
    """A map in [0, 1] of the image's size (image: one normalised tensor, C x H x W)."""
    last_convolution = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    captured = {}
    hook = last_convolution.register_forward_hook(lambda module, inputs, output: captured.update(maps=output))
    try:
        with torch.enable_grad():
            logits = model(image.unsqueeze(0))
            maps = captured["maps"]
            (gradients,) = torch.autograd.grad(logits[0, 1] - logits[0, 0], maps)
    finally:
        hook.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)             # one weight per feature map
    cam = torch.relu((weights * maps).sum(dim=1, keepdim=True)).detach()
    cam = nn.functional.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam -= cam.min()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay(picture, cam):
    """The picture with the map laid over it as heat: transparent where 0, yellow-red where 1."""
    heat = torch.stack([(3 * cam).clamp(0, 1), (3 * cam - 1).clamp(0, 1), (3 * cam - 2).clamp(0, 1) * 0.3])
    heat_image = Image.fromarray((heat.permute(1, 2, 0) * 255).byte().cpu().numpy())
    opacity = Image.fromarray((cam * 180).byte().cpu().numpy())
    return Image.composite(heat_image, picture, opacity)


def draw_grad_cam_gallery(model, dataset, probabilities, labels, threshold, path, device, mean, std, per_row=3):
    """The most confident hits and misses, each as seen and with its Grad-CAM map."""
    ranked = sorted(range(len(labels)), key=lambda i: -probabilities[i])
    rows = {"true positives (most confident)": [i for i in ranked if labels[i] and probabilities[i] >= threshold],
            "false negatives (most confident)": [i for i in ranked[::-1] if labels[i] and probabilities[i] < threshold],
            "false positives (most confident)": [i for i in ranked if not labels[i] and probabilities[i] >= threshold]}
    size = dataset[0][0].shape[-1]
    font = ImageFont.load_default(13)
    cell_width, cell_height = 2 * size + 12, size + 40
    gallery = Image.new("RGB", (per_row * cell_width, len(rows) * cell_height), "white")
    draw = ImageDraw.Draw(gallery)
    for row, (title, indices) in enumerate(rows.items()):
        top = row * cell_height
        draw.text((4, top + 4), title if indices else f"{title}: none", fill="black", font=font)
        for column, index in enumerate(indices[:per_row]):
            image = dataset[index][0].to(device)
            picture = to_picture(image, mean, std)
            left = column * cell_width
            gallery.paste(picture, (left, top + 22))
            gallery.paste(overlay(picture, grad_cam(model, image)), (left + size + 4, top + 22))
            draw.text((left, top + 24 + size), f"{dataset.table['isic_id'][index]}  p={probabilities[index]:.2f}",
                      fill="black", font=font)
    save_image(gallery, path)


# --- Reporting ----------------------------------------------------------------------------------------

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


def draw_confusion_matrix(matrix, threshold, path, cell=150):
    """A 2x2 grid: counts, and each row's share, shaded darker where the share is larger."""
    font, small = ImageFont.load_default(22), ImageFont.load_default(14)
    left, top = 130, 70
    image = Image.new("RGB", (left + 2 * cell + 20, top + 2 * cell + 20), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 15), f"confusion matrix (threshold {threshold:.3g})", fill="black", font=small)
    for i, name in enumerate(("benign", "malignant")):
        draw.text((left + i * cell + cell / 2, top - 15), f"called {name}", fill="black", font=small, anchor="mm")
        draw.text((left - 10, top + i * cell + cell / 2), f"truly {name}", fill="black", font=small, anchor="rm")
        row_total = sum(matrix[i])
        for j in range(2):
            share = ratio(matrix[i][j], row_total)
            shade = 255 - int(180 * (0 if math.isnan(share) else share))
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell]
            draw.rectangle(box, fill=(shade, shade, 255), outline="black")
            colour = "white" if shade < 150 else "black"
            centre = (box[0] + cell / 2, box[1] + cell / 2)
            draw.text((centre[0], centre[1] - 12), str(matrix[i][j]), fill=colour, font=font, anchor="mm")
            draw.text((centre[0], centre[1] + 16), f"{share:.0%} of row" if row_total else "", fill=colour,
                      font=small, anchor="mm")
    save_image(image, path)


class Chart:
    """A frame with ticks, axis labels and a title, drawn with Pillow; `xy` maps data to pixels."""

    def __init__(self, title, x_label, y_label, x_max, y_max, x_ticks, y_ticks, size=(400, 400)):
        self.font = ImageFont.load_default(14)
        self.left, self.top, (self.width, self.height) = 75, 40, size
        self.x_max, self.y_max = x_max, y_max
        self.image = Image.new("RGB", (self.left + self.width + 30, self.top + self.height + 60), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.draw.rectangle([*self.xy(0, y_max), *self.xy(x_max, 0)], outline="black")
        for tick in x_ticks:
            x, y = self.xy(tick, 0)
            self.draw.line([(x, y), (x, y + 5)], fill="black")
            self.draw.text((x, y + 8), f"{tick:g}", fill="black", font=self.font, anchor="mt")
        for tick in y_ticks:
            x, y = self.xy(0, tick)
            self.draw.line([(x, y), (x - 5, y)], fill="black")
            self.draw.text((x - 8, y), f"{tick:g}", fill="black", font=self.font, anchor="rm")
        self.draw.text((self.left, 12), title, fill="black", font=self.font)
        self.draw.text((self.left + self.width / 2, self.top + self.height + 30), x_label, fill="black",
                       font=self.font, anchor="mt")
        label = Image.new("RGB", (self.height, 20), "white")  # the y label, written sideways
        ImageDraw.Draw(label).text((self.height / 2, 10), y_label, fill="black", font=self.font, anchor="mm")
        self.image.paste(label.rotate(90, expand=True), (4, self.top))

    def xy(self, x, y):
        """Data coordinates to pixels; y grows upwards on a chart, downwards in an image."""
        return self.left + x / self.x_max * self.width, self.top + (1 - y / self.y_max) * self.height


def draw_roc(labels, probabilities, metrics, path):
    """The ROC curve, the chance diagonal, the pAUC region shaded, and the operating point marked."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    ticks = (0, 0.2, 0.4, 0.6, 0.8, 1)
    chart = Chart(f"ROC   AUC {metrics['auc']:.3f}   pAUC(TPR>=0.8) {metrics['pauc_80']:.3f}",
                  "false positive rate (1 - specificity)", "true positive rate (sensitivity)", 1, 1, ticks, ticks)
    xy, draw = chart.xy, chart.draw
    draw.line([xy(0, 0), xy(1, 1)], fill=(170, 170, 170), width=1)  # a classifier that guesses
    draw.line([xy(0, 0.8), xy(1, 0.8)], fill=(230, 180, 180), width=1)
    if fpr:
        # Shade the pAUC region: under the curve and above TPR = 0.8.
        above = [(x, max(y, 0.8)) for x, y in zip(fpr, tpr)]
        draw.polygon([xy(x, y) for x, y in above] + [xy(1, 0.8), xy(0, 0.8)], fill=(250, 215, 215))
        draw.line([xy(x, y) for x, y in zip(fpr, tpr)], fill=(30, 60, 200), width=3)
        x, y = xy(1 - metrics["specificity"], metrics["recall"])
        draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=(200, 30, 30), width=3)
        draw.text((x + 10, y + 6), f"threshold {metrics['threshold']:.3g}", fill=(200, 30, 30), font=chart.font)
    save_image(chart.image, path)


def evaluation_transform(checkpoint):
    """The preprocessing the checkpoint's model was validated with: its size, normalisation and colours."""
    return build_transforms(checkpoint["img_size"], False, checkpoint["mean"], checkpoint["std"],
                            checkpoint["colour_constancy"])


def mean_over_models(probabilities):
    """An ensemble's probability for each image: the mean of its members' (one list per member)."""
    return [sum(per_image) / len(per_image) for per_image in zip(*probabilities)]


def pick_threshold(checkpoints, names, target_sensitivity=None):
    """The decision threshold: the checkpoint's own (best balanced accuracy on validation), or one chosen
    again on its stored validation predictions; for an ensemble, on the mean of its members' predictions."""
    if len(checkpoints) == 1 and target_sensitivity is None:
        return checkpoints[0]["threshold"]
    validations = [checkpoint["val_predictions"] for checkpoint in checkpoints]
    for name, validation in zip(names, validations):
        if validation["isic_id"] != validations[0]["isic_id"]:
            raise ValueError(f"{name} was validated on other images than {names[0]}: an ensemble's threshold "
                             "needs models trained on the same data folder (for instance, with different --seed)")
    mean = mean_over_models([validation["probability"] for validation in validations])
    return choose_threshold(validations[0]["label"], mean, target_sensitivity)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                        help="a .pt file written by train.py; with several, their probabilities are averaged")
    parser.add_argument("--data", default=None, help="folder with labels.csv (default: the one trained on)")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--out", default=None, help="folder for the report (default: reports/<checkpoint name>)")
    parser.add_argument("--image", default=None, help="classify this one image instead")
    parser.add_argument("--target-sensitivity", type=float, default=None, metavar="S",
                        help="use the highest threshold that caught this share of the validation images' "
                             "malignant lesions (e.g. 0.9 for screening) instead of the best balanced accuracy")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes (default: as train.py chooses them)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    args = parser.parse_args()

    device = pick_device(args.device)
    try:
        members = [load_checkpoint(path, device) for path in args.checkpoints]
        model, checkpoint = members[0]  # the one whose Grad-CAM is drawn
        threshold = pick_threshold([info for _, info in members], args.checkpoints, args.target_sensitivity)
        out = Path(args.out or Path("reports") / Path(args.checkpoints[0]).stem)
        out.mkdir(parents=True, exist_ok=True)
        if args.image:
            image = load_image(args.image)
            with torch.inference_mode():
                probability = sum(member(evaluation_transform(info)(image).unsqueeze(0).to(device))
                                  .float().softmax(dim=1)[0, 1].item() for member, info in members) / len(members)
            verdict = "malignant" if probability >= threshold else "benign"
            print(f"{args.image}: P(malignant) = {probability:.3f} -> {verdict} (threshold {threshold:.3g})")
            tensor = evaluation_transform(checkpoint)(image).to(device)
            picture = to_picture(tensor, checkpoint["mean"], checkpoint["std"])
            save_image(overlay(picture, grad_cam(model, tensor)), out / f"grad_cam_{Path(args.image).stem}.png")
            print(f"where it looked: {out / f'grad_cam_{Path(args.image).stem}.png'}")
            return
        data = args.data or checkpoint["args"]["data"]
        # Each member sees the images as it was trained to (its own size and normalisation).
        probabilities = []
        for member, info in members:
            dataset = CustomDataset(data, args.split, evaluation_transform(info))
            loader = DataLoader(dataset, args.batch_size, shuffle=False,
                                **loader_options(worker_count(args.workers, device)))
            member_probabilities, labels = predict(member, loader, device, info["tta"])
            probabilities.append(member_probabilities)
        probabilities = mean_over_models(probabilities)
        dataset.transform = evaluation_transform(checkpoint)  # the first member's, for its Grad-CAM
    except (DataError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")

    metrics = all_metrics(labels, probabilities, threshold)
    at_half = threshold_metrics(labels, probabilities, 0.5)
    names = " + ".join(f"{path} ({info['model']})" for path, (_, info) in zip(args.checkpoints, members))
    print(f"{names} on the {args.split} split of {data}:")
    print_report(metrics, at_half)

    report = {**without_nan(metrics), "at_threshold_0.5": without_nan(at_half), "checkpoints": args.checkpoints,
              "models": [info["model"] for _, info in members], "data": str(data), "split": args.split,
              "target_sensitivity": args.target_sensitivity}
    save_atomically(out / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    predictions = pd.DataFrame({"isic_id": dataset.table["isic_id"], "probability_malignant": probabilities,
                                "label": labels, "predicted": [int(p >= threshold) for p in probabilities]})
    save_atomically(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    draw_confusion_matrix(metrics["confusion_matrix"], threshold, out / "confusion_matrix.png")
    draw_roc(labels, probabilities, metrics, out / "roc.png")
    draw_grad_cam_gallery(model, dataset, probabilities, labels, threshold, out / "grad_cam.png", device,
                          checkpoint["mean"], checkpoint["std"])
    print(f"wrote metrics.json, predictions.csv, confusion_matrix.png, roc.png and grad_cam.png to {out}")


if __name__ == "__main__":
    sys.exit(main())

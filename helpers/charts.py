"""Charts drawn with Pillow: training curves, the ROC curve, the reliability diagram, the confusion matrix and the
augmentation grid.

A first reading can skip it: train.py and evaluate.py call these to draw what they computed.
"""
import math

import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.transforms import v2

from helpers.files import save_image
from helpers.images import load_image


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


def draw_curves(history, best_epoch, path, train_loss="cross-entropy"):
    """Loss (train and validation) and validation AUC per epoch, side by side, the best epoch marked. The two
    losses differ in kind: the training loss is `train_loss` on augmented images (dropout on), the
    validation loss is cross-entropy on the validation images as they are scored (with TTA, their 8 views)."""
    last = max(history[-1]["epoch"], 2)
    epochs = range(0, last + 1, math.ceil(last / 6))
    top = max(max(row["train_loss"], row["val_loss"]) for row in history) * 1.1
    step = 10 ** math.floor(math.log10(top / 4))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= top / 4)  # a round step: 0.1, 0.2, 0.5, 1 ...
    loss_ticks = [round(k * step, 6) for k in range(int(top / step) + 1)]
    loss = Chart("loss: train (blue), validation (orange)", "epoch", f"train: {train_loss}; val: cross-entropy",
                 last, top, epochs, loss_ticks)
    one_view = any(row.get("val_views") == 1 for row in history[:-1]) and history[-1].get("val_views") == 8
    title = f"validation AUC (kept: epoch {best_epoch}{'; before it, 1 view' if one_view else ''})"
    auc = Chart(title, "epoch", "AUC", last, 1, epochs,
                (0, 0.2, 0.4, 0.6, 0.8, 1))
    for chart, series in ((loss, {"train_loss": (30, 60, 200), "val_loss": (230, 120, 20)}),
                          (auc, {"val_auc": (30, 150, 60)})):
        x = chart.xy(best_epoch, 0)[0]
        chart.draw.line([(x, chart.top), (x, chart.top + chart.height)], fill=(190, 190, 190), width=2)
        for key, colour in series.items():
            points = [chart.xy(row["epoch"], row[key]) for row in history if not math.isnan(row[key])]
            if len(points) > 1:
                chart.draw.line(points, fill=colour, width=3)
            for x, y in points:
                chart.draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    both = Image.new("RGB", (loss.image.width + auc.image.width, loss.image.height), "white")
    both.paste(loss.image, (0, 0))
    both.paste(auc.image, (loss.image.width, 0))
    save_image(both, path)


def draw_roc(fpr, tpr, metrics, path):
    """The ROC curve (its points: false and true positive rates), the chance diagonal, the pAUC region
    shaded, and the operating point (metrics' specificity and recall) marked."""
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


def draw_reliability(bins, calibration, path):
    """The reliability diagram: each bin's mean probability against the share of its images that is
    malignant (dots, joined), the diagonal where they agree, and below, each bin's extent with the
    number of images in it."""
    ticks = (0, 0.2, 0.4, 0.6, 0.8, 1)
    chart = Chart(f"reliability, {len(bins)} equal-width bins   ECE {calibration['ece']:.3f}   "
                  f"Brier {calibration['brier']:.3f}", "mean predicted P(malignant) in the bin",
                  "observed share malignant in the bin", 1, 1, ticks, ticks)
    xy, draw = chart.xy, chart.draw
    draw.line([xy(0, 0), xy(1, 1)], fill=(170, 170, 170), width=1)  # calibrated
    most = max(b["images"] for b in bins) or 1
    small = ImageFont.load_default(11)
    for b in bins:  # a grey bar per bin, as high as its share of images (a fifth of the frame)
        left, bottom = xy(b["from"], 0)
        right, top = xy(b["to"], 0.2 * b["images"] / most)
        draw.rectangle([left + 1, top, right - 1, bottom], fill=(225, 225, 225), outline=(190, 190, 190))
        draw.text(((left + right) / 2, top - 2), str(b["images"]), fill=(90, 90, 90), font=small, anchor="mb")
    points = [xy(b["mean_probability"], b["observed_share"]) for b in bins if b["images"]]
    if len(points) > 1:
        draw.line(points, fill=(30, 60, 200), width=2)
    for x, y in points:
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=(30, 60, 200))
    prevalence = calibration["prevalence"]
    given = prevalence["target"] if prevalence.get("target") is not None else prevalence["assumed"]
    draw.text(xy(0.02, 0.97), f"for a population {given:.1%} malignant; "
              f"{calibration['observed_share']:.1%} here", fill="black", font=chart.font, anchor="lt")
    draw.text(xy(0.02, 0.91), "grey: images in each bin", fill=(90, 90, 90), font=chart.font, anchor="lt")
    save_image(chart.image, path)


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
            share = matrix[i][j] / row_total if row_total else math.nan
            shade = 255 - int(180 * (0 if math.isnan(share) else share))
            box = [left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell]
            draw.rectangle(box, fill=(shade, shade, 255), outline="black")
            colour = "white" if shade < 150 else "black"
            centre = (box[0] + cell / 2, box[1] + cell / 2)
            draw.text((centre[0], centre[1] - 12), str(matrix[i][j]), fill=colour, font=font, anchor="mm")
            draw.text((centre[0], centre[1] + 16), f"{share:.0%} of row" if row_total else "", fill=colour,
                      font=small, anchor="mm")
    save_image(image, path)


def draw_odds(factors, title, path, row=26):
    """One bar per (name, factor): how many times it multiplies the odds, on a log scale centred on 1
    (bars to the right raise the odds, to the left lower them)."""
    font = ImageFont.load_default(14)
    left, top, width = 150, 50, 360
    span = max(2.0, *(max(f, 1 / f) for _, f in factors))  # the axis runs from 1/span to span
    ticks = [2.0 ** k for k in range(-8, 9) if 1 / span <= 2.0 ** k <= span]
    image = Image.new("RGB", (left + width + 70, top + row * len(factors) + 50), "white")
    draw = ImageDraw.Draw(image)

    def x(factor):
        return left + width / 2 * (1 + math.log(factor) / math.log(span))

    draw.text((10, 15), title, fill="black", font=font)
    for i, (name, factor) in enumerate(factors):
        y = top + i * row
        colour = (200, 60, 40) if factor > 1 else (40, 110, 200)
        draw.rectangle([min(x(1), x(factor)), y + 4, max(x(1), x(factor)), y + row - 4], fill=colour)
        draw.text((left - 10, y + row / 2), name, fill="black", font=font, anchor="rm")
        draw.text((left + width + 12, y + row / 2), f"x{factor:.2f}", fill="black", font=font, anchor="lm")
    bottom = top + row * len(factors) + 5
    draw.line([(x(1), top - 5), (x(1), bottom)], fill="black")
    for tick in ticks:
        draw.line([(x(tick), bottom), (x(tick), bottom + 5)], fill="black")
        draw.text((x(tick), bottom + 8), f"x{tick:g}", fill="black", font=font, anchor="mt")
    save_image(image, path)


def to_picture(tensor, mean, std):
    """Undo the normalisation of one image tensor, for showing it."""
    tensor = tensor.cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return v2.functional.to_pil_image(tensor.clamp(0, 1))


def draw_augmentation_grid(dataset, plain, path, mean, std, rows=6, variants=3, seed=0):
    """What the model sees: a few images of a training dataset, as evaluated (the transform `plain`) and
    after random augmentations (the dataset's own transform)."""
    img_size = plain(load_image(dataset.paths[0])).shape[-1]
    font = ImageFont.load_default(14)
    label_width, header = 110, 30
    grid = Image.new("RGB", (label_width + (1 + variants) * (img_size + 4), header + rows * (img_size + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for column, title in enumerate(["as evaluated"] + [f"augmented {i + 1}" for i in range(variants)]):
        draw.text((label_width + column * (img_size + 4) + img_size / 2, header / 2), title, fill="black",
                  font=font, anchor="mm")
    # Alternate the classes, so both are shown; a private random state leaves training's untouched.
    by_class = [dataset.table.index[dataset.table["label"] == label].tolist() for label in (0, 1)]
    picks = [by_class[r % 2][r // 2] for r in range(rows) if r // 2 < len(by_class[r % 2])]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for row, index in enumerate(picks):
            image = load_image(dataset.paths[index])
            top = header + row * (img_size + 4)
            draw.text((8, top + img_size / 2), "malignant" if dataset.table["label"][index] else "benign",
                      fill="black", font=font, anchor="lm")
            for column, transform in enumerate([plain] + [dataset.transform] * variants):
                grid.paste(to_picture(transform(image), mean, std), (label_width + column * (img_size + 4), top))
    save_image(grid, path)

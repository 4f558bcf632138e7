"""Step 2 of 5: from labels.csv to batches of tensors.

A model cannot read JPEGs: it needs tensors of one size, normalised the way its first layer expects.
`CustomDataset` opens one image per index and turns it into such a tensor; `build_loaders` wraps the
three splits in DataLoaders that shuffle, batch and load in parallel.

Training images are *augmented*: each epoch sees every lesion cropped, flipped, rotated and re-lit a
little differently. A lesion has no "up", and cameras differ in light and zoom, so these are changes
the label must not depend on; showing them teaches the model to ignore them, which matters most when
there are only a few hundred images. Evaluation images are never augmented: a score must not depend
on chance.

Example (prints one training batch, and draws a few images as the model sees them):
  python dataset.py data/ --out augmentations.png
"""
import argparse
import math
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

# ImageNet's channel means and standard deviations. Pretrained backbones expect inputs normalised
# with these; a model trained from scratch does not care which constants are used, so all share them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(Exception):
    """Input the pipeline cannot use. The message names the file and what to do about it."""

    def __init__(self, message):
        # Raised in a DataLoader worker process, it is raised again in the main one with the worker's
        # traceback as its message; keep only its own words, the traceback's last line.
        if message.startswith("Caught DataError in DataLoader worker"):
            message = message.rstrip().rsplit("DataError: ", 1)[-1]
        super().__init__(message)


def save_atomically(path, write):
    """Call write(temporary path), then rename it to `path`. The rename is atomic, so a crash, Ctrl-C or
    full disk leaves either the previous file or the new one, never half a file. Every output goes here."""
    tmp = f"{path}.tmp"
    write(tmp)
    os.replace(tmp, path)


def save_image(image, path):
    save_atomically(path, lambda tmp: image.save(tmp, format="PNG"))


def refuse_huge(image, path):
    """A file of a few kB can claim billions of pixels (a "decompression bomb"); refuse it before decoding."""
    if image.width * image.height > Image.MAX_IMAGE_PIXELS:
        raise DataError(f"{path} claims {image.width}x{image.height} pixels, more than the "
                        f"{Image.MAX_IMAGE_PIXELS:,} allowed (a decompression-bomb guard); resize it if it is real")


def load_image(path, shorter_side=None):
    """Open any image as 8-bit RGB, upright as the camera meant it, or raise DataError naming it.

    With shorter_side, a JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale that keeps its shorter
    side at least that long: JPEG stores its picture in 8x8 blocks, so it can skip the detail it would
    throw away, and a 6000x4000 photo wanted at 256 px decodes ten times faster or more.
    """
    try:
        image = Image.open(path)
        refuse_huge(image, path)
        if shorter_side:
            scale = shorter_side / min(image.size)
            image.draft("RGB", (math.ceil(image.width * scale), math.ceil(image.height * scale)))
        image = ImageOps.exif_transpose(image)  # phones store "rotate 90°" as a tag, not as pixels
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit: scale 0..65535 down to 0..255
            image = image.convert("I").point(lambda value: value * (1 / 256)).convert("L")
        if image.mode == "P" and "transparency" in image.info:
            image = image.convert("RGBA")
        return image.convert("RGB")  # L, LA, RGBA, CMYK, YCbCr ... -> RGB
    except FileNotFoundError:
        raise DataError(f"image not found: {path}; run prepare_data.py again or restore the file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise DataError(f"cannot decode image {path} ({error}); replace the file or remove its row") from None


def shades_of_grey(image, power=6):
    """Colour constancy: rescale each channel so that the scene's light looks grey.

    Each camera and lamp tints its pictures; Finlayson and Trezzi's "shades of grey" (2004) estimates the
    tint as the power-mean of each channel (p=6 sits between the mean, "grey world", and the maximum,
    "white patch") and divides it out. Dermoscopy classifiers use it against differences between
    clinics (Barata et al., IEEE JBHI 2015; the ISIC 2019 winners, Gessert et al. 2020).
    """
    light = image.clamp(min=0).pow(power).mean(dim=(-2, -1), keepdim=True).pow(1 / power)
    return (image * light.mean(dim=-3, keepdim=True) / light.clamp(min=1e-6)).clamp(0, 1)


# How much training images are varied: "light" changes framing, orientation and light a little;
# "strong" also zooms further, rotates freely, changes colour more and sometimes blurs, which asks the
# model to ignore more of what differs between cameras and clinics.
AUGMENTATIONS = {
    "light": dict(scale=(0.5, 1.0), degrees=45, jitter=(0.2, 0.2, 0.2, 0.02), blur=0.0),
    "strong": dict(scale=(0.25, 1.0), degrees=180, jitter=(0.3, 0.3, 0.3, 0.05), blur=0.3),
}


def build_transforms(img_size, train, mean=IMAGENET_MEAN, std=IMAGENET_STD, colour_constancy=False,
                     augment="light"):
    """Augmentation for training; a deterministic resize and centre crop for evaluation.

    With colour_constancy, every image (training or not) is first colour-corrected by shades_of_grey.
    Cropping and resizing come before the conversion to float where they can: on 8-bit pixels, and
    on the small crop rather than the whole photo, they cost a fraction of the time.
    """
    steps = [v2.ToImage()]
    if colour_constancy:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Lambda(shades_of_grey)]
    if train:
        strength = AUGMENTATIONS[augment]
        steps += [
            v2.RandomResizedCrop(img_size, scale=strength["scale"], antialias=True),  # zoom and framing
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(strength["degrees"]),                                  # no "up" on skin
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(*strength["jitter"]),                                     # light, camera
            v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=strength["blur"]),  # focus
        ]
    else:
        steps += [v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose([*steps, v2.Normalize(mean, std)])


def read_labels(data_dir):
    """labels.csv as a table, with image paths made absolute; DataError if it is missing or malformed."""
    csv = Path(data_dir) / "labels.csv"
    if not csv.exists():
        raise DataError(f"{csv} not found; run prepare_data.py --out {data_dir} first")
    table = pd.read_csv(csv, dtype={"isic_id": str, "image_path": str, "cached_path": str, "split": str,
                                     "group": str})
    missing = {"isic_id", "image_path", "label", "split"} - set(table.columns)
    if missing:
        raise DataError(f"{csv} lacks the columns {sorted(missing)}; write it with prepare_data.py")
    wrong = table.index[~table["label"].isin([0, 1])]
    if len(wrong):
        raise DataError(f"{csv}, line {wrong[0] + 2}: label '{table['label'][wrong[0]]}' is not 0 (benign) or "
                        f"1 (malignant); write the file with prepare_data.py")
    # A relative path must stay inside the data folder: '../../somewhere' in an edited file is refused.
    root = os.path.normpath(csv.parent)
    for column in {"image_path", "cached_path"} & set(table.columns):
        for line, path in enumerate(table[column], start=2):
            if (isinstance(path, str) and ".." in path and not Path(path).is_absolute()
                    and not Path(os.path.normpath(csv.parent / path)).is_relative_to(root)):
                raise DataError(f"{csv}, line {line}: {column.replace('_', ' ')} {path} leads outside {root}; "
                                "fix or remove the row")
    table["image_path"] = [str(csv.parent / path) for path in table["image_path"]]  # absolute stays absolute
    # The copy to read: prepare_data.py's resized copy where it made one (see there), else the original.
    copies = table["cached_path"] if "cached_path" in table else [None] * len(table)
    table["load_path"] = [str(csv.parent / copy) if isinstance(copy, str) else original
                          for copy, original in zip(copies, table["image_path"])]
    return table


class CustomDataset(Dataset):
    """The images of one split of labels.csv, as (tensor, label) pairs.

    With shard=(k, n), only every n-th image from the k-th on: process k of n scores its share of the
    validation images (see train.py, on training with several processes).
    """

    def __init__(self, data_dir, split, transform, shard=(0, 1)):
        table = read_labels(data_dir)
        self.table = table[table["split"] == split].reset_index(drop=True)
        if self.table.empty:
            raise DataError(f"split '{split}' of {Path(data_dir) / 'labels.csv'} has no images")
        self.table = self.table[shard[0]::shard[1]].reset_index(drop=True)
        self.transform = transform
        # Columns as plain lists: fast to index, and cheap to copy into worker processes.
        self.paths, self.labels = self.table["load_path"].tolist(), self.table["label"].tolist()

    def __len__(self):
        return len(self.table)

    def __getitem__(self, index):
        return self.transform(load_image(self.paths[index])), self.labels[index]


class EpochSampler(Sampler):
    """Which training images an epoch visits, and in what order: a function of (seed, epoch) alone.

    - plain: every image once, shuffled;
    - balanced: as many draws as images, each class equally likely (minority images repeat);
    - neg_per_pos=K: every malignant image and K times as many benign ones, a fresh random set each
      epoch. At ISIC 2024's 1 malignant in 1,000, an epoch of everything is 99.9 % benign images the
      model already knows; this sees every benign image in time while each epoch stays short and balanced.
    With several processes (rank k of n, see train.py), each takes every n-th index of the same order,
    as torch's DistributedSampler does: n disjoint shares of one shuffled epoch. Call set_epoch first.
    """

    def __init__(self, labels, seed, balanced=False, neg_per_pos=None, rank=0, world_size=1):
        self.labels = torch.as_tensor(labels)
        self.seed, self.balanced, self.neg_per_pos = seed, balanced, neg_per_pos
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.positives = self.labels.nonzero().flatten()
        self.negatives = (self.labels == 0).nonzero().flatten()
        self.size = len(self.labels)
        if neg_per_pos:
            self.size = len(self.positives) + min(len(self.negatives), neg_per_pos * len(self.positives))

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.size / self.world_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.neg_per_pos:
            drawn = self.negatives[torch.randperm(len(self.negatives), generator=generator)]
            chosen = torch.cat([self.positives, drawn[:self.size - len(self.positives)]])
            order = chosen[torch.randperm(len(chosen), generator=generator)]
        elif self.balanced:
            weight_per_class = 1.0 / torch.bincount(self.labels, minlength=2).clamp(min=1)
            order = torch.multinomial(weight_per_class[self.labels], self.size, True, generator=generator)
        else:
            order = torch.randperm(self.size, generator=generator)
        padded = torch.cat([order, order[:len(self) * self.world_size - self.size]])  # equal shares
        return iter(padded[self.rank::self.world_size].tolist())


def build_loaders(data_dir, img_size, batch_size, balanced_sampler=False, workers=0, seed=0, neg_per_pos=None,
                  rank=0, world_size=1, **preprocessing):
    """DataLoaders for training: train (augmented, shuffled) and val (plain, in order).

    How the training images are drawn (all once, class-balanced, or K benign per malignant) is up to
    EpochSampler: answers to class imbalance at the sampling end; weighting or focusing the loss, the
    other answers, live in train.py. rank and world_size give this process its share when several
    train together. `preprocessing` (mean, std, colour_constancy, augment) goes to build_transforms.
    """
    train_set = CustomDataset(data_dir, "train", build_transforms(img_size, True, **preprocessing))
    val_set = CustomDataset(data_dir, "val", build_transforms(img_size, False, **preprocessing),
                            shard=(rank, world_size))
    sampler = EpochSampler(train_set.labels, seed, balanced_sampler, neg_per_pos, rank, world_size)
    # The generator seeds the worker processes' random augmentations: same seed, same augmentations.
    generator = torch.Generator().manual_seed(seed)
    # drop_last: a final batch of one image would break BatchNorm's batch statistics.
    train_loader = DataLoader(train_set, batch_size, sampler=sampler, generator=generator,
                              drop_last=len(sampler) > batch_size, **loader_options(workers))
    return train_loader, DataLoader(val_set, batch_size, shuffle=False, **loader_options(workers))


def worker_count(requested, device):
    """Worker processes to load images in: as requested, or by default for the device. Feeding a GPU is
    the CPU's only job, so all but one core load (at most 8). On a CPU the cores are what trains the
    model, and loading a 256 px copy takes a few ms against tens of ms of training per image: one worker
    per four cores keeps up (on a 2-core CPU, none: one worker measured no clear gain over loading in
    the training process, see README)."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(8, cores - 1) if device.type == "cuda" else cores // 4


def loader_options(workers):
    """Worker processes decode images while the model computes, and stay alive from one epoch to the next
    (persistent) rather than starting again; pinned memory speeds copies to a GPU."""
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


class Progress:
    """A progress line for work that takes more than a few seconds: redrawn in place on a terminal,
    printed as a new line every 30 s when the output goes to a log file."""

    def __init__(self, what, total):
        self.what, self.total = what, total
        self.started = self.last = time.time()
        self.interactive = sys.stdout.isatty()

    def update(self, done, detail=""):
        now = time.time()
        if now - self.started < 3 or now - self.last < (1 if self.interactive else 30):
            return
        self.last = now
        line = f"  {self.what} {done}/{self.total} images, {done / (now - self.started):.0f} images/s"
        line += f", {detail}" if detail else ""
        print("\r" + line if self.interactive else line, end="" if self.interactive else "\n", flush=True)

    def close(self):
        if self.interactive and self.last > self.started:
            print("\r\033[K", end="", flush=True)  # erase the line, so the next print starts clean


def to_picture(tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Undo the normalisation of one image tensor, for showing it."""
    tensor = tensor.cpu() * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    return v2.functional.to_pil_image(tensor.clamp(0, 1))


def draw_augmentation_grid(data_dir, img_size, path, rows=6, variants=3, seed=0, **preprocessing):
    """What the model sees: a few training images, as evaluated and after random augmentations."""
    dataset = CustomDataset(data_dir, "train", build_transforms(img_size, True, **preprocessing))
    plain = build_transforms(img_size, False, **preprocessing)
    mean, std = preprocessing.get("mean", IMAGENET_MEAN), preprocessing.get("std", IMAGENET_STD)
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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="?", default="data", help="folder with labels.csv")
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--out", default=None, help="where to draw the grid (default: DATA/augmentations.png)")
    args = parser.parse_args()
    train_loader, _ = build_loaders(args.data, args.img_size, batch_size=8)
    images, labels = next(iter(train_loader))
    print(f"one training batch: images {tuple(images.shape)} {images.dtype}, "
          f"mean {images.mean():.2f} std {images.std():.2f}; labels {labels.tolist()}")
    out = args.out or Path(args.data) / "augmentations.png"
    draw_augmentation_grid(args.data, args.img_size, out)
    print(f"drew {out}")

"""Step 2 of 5: from labels.csv to batches of tensors.

A model cannot read JPEGs: it needs tensors of one size, normalised the way its first layer expects.
`CustomDataset` opens one image per index and turns it into such a tensor; `build_loaders` wraps the
train and val splits in DataLoaders that shuffle, batch and load in parallel.

Training images are *augmented*: each epoch sees every lesion cropped, flipped, rotated and re-lit a
little differently. A lesion has no "up", and cameras differ in light and zoom, so these are changes
the label must not depend on; showing them teaches the model to ignore them, which matters most when
there are only a few hundred images. Evaluation images are never augmented: a score must not depend
on chance.

Example (prints one training batch, and draws a few images as the model sees them):
  python dataset.py data/ --out augmentations.png
"""
import math
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from helpers.charts import draw_augmentation_grid
from helpers.files import DataError, Parser, leads_outside, number, stop
from helpers.images import load_image


class CustomDataset(Dataset):
    """Images listed in a table (read_labels' rows: load_path, the file to read, and label), as
    (tensor, label) pairs: the table says which images, the transform how they are seen."""

    def __init__(self, table, transform):
        self.table = table.reset_index(drop=True)
        self.transform = transform
        # Columns as plain lists: fast to index, and cheap to copy into worker processes.
        self.paths, self.labels = self.table["load_path"].tolist(), self.table["label"].tolist()

    def __len__(self):
        return len(self.table)

    def __getitem__(self, index):
        return self.transform(load_image(self.paths[index])), self.labels[index]


def build_transforms(img_size, train, mean, std):
    """Augmentation for training; a deterministic resize and centre crop for evaluation.

    Both end by normalising each channel with the (mean, std) the model expects (see model.py).
    Cropping and resizing come before the conversion to float where they can: on 8-bit pixels, and
    on the small crop rather than the whole photo, they cost a fraction of the time.
    """
    if train:
        steps = [
            v2.ToImage(),
            v2.RandomResizedCrop(img_size, scale=(0.5, 1.0), antialias=True),  # zoom and framing
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomRotation(45),                                              # no "up" on skin
            v2.ToDtype(torch.float32, scale=True),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),  # light, camera
        ]
    else:
        steps = [v2.ToImage(), v2.Resize(img_size, antialias=True), v2.CenterCrop(img_size),
                 v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose([*steps, v2.Normalize(mean, std)])


def read_labels(data_dir):
    """labels.csv as a table, with image paths made absolute; DataError if it is missing or
    malformed."""
    csv = Path(data_dir) / "labels.csv"
    if not csv.exists():
        raise DataError(f"{csv} not found; run prepare_data.py --out {data_dir} first")
    table = pd.read_csv(csv, dtype={"isic_id": str, "image_path": str, "cached_path": str,
                                    "split": str, "group": str})
    missing = {"isic_id", "image_path", "label", "split"} - set(table.columns)
    if missing:
        raise DataError(f"{csv} lacks the columns {sorted(missing)}; write it with prepare_data.py")
    wrong = table.index[~table["label"].isin([0, 1])]
    if len(wrong):
        raise DataError(f"{csv}, line {wrong[0] + 2}: label '{table['label'][wrong[0]]}' is not "
                        "0 (benign) or 1 (malignant); write the file with prepare_data.py")
    # A relative path must stay inside the data folder: '../../somewhere' in an edited file is
    # refused.
    root = csv.parent
    for column in {"image_path", "cached_path"} & set(table.columns):
        for line, path in enumerate(table[column], start=2):
            if (isinstance(path, str) and ".." in path and not Path(path).is_absolute()
                    and leads_outside(root / path, root)):
                raise DataError(f"{csv}, line {line}: {column.replace('_', ' ')} {path} leads "
                                f"outside {root}; fix or remove the row")
    table["image_path"] = [str(csv.parent / path)  # absolute stays absolute
                           for path in table["image_path"]]
    # The copy to read: prepare_data.py's resized copy where it made one (see there), else the
    # original.
    copies = table["cached_path"] if "cached_path" in table else [None] * len(table)
    table["load_path"] = [str(csv.parent / copy) if isinstance(copy, str) else original
                          for copy, original in zip(copies, table["image_path"])]
    return table


def read_split(data_dir, split):
    """The rows of labels.csv in one split (train, val or test)."""
    table = read_labels(data_dir)
    table = table[table["split"] == split].reset_index(drop=True)
    if table.empty:
        raise DataError(f"split '{split}' of {Path(data_dir) / 'labels.csv'} has no images")
    return table


# --- Batches: which training images an epoch visits, and the DataLoaders --------------------------

class EpochSampler(Sampler):
    """Which training images an epoch visits, and in what order: a function of (seed, epoch) alone.

    - plain: every image once, shuffled;
    - balanced: as many draws as images, each class equally likely (minority images repeat);
    - neg_per_pos=K: every malignant image and K times as many benign ones, a fresh random set each
      epoch. At ISIC 2024's 1 malignant in 1,000, an epoch of everything is 99.9 % benign images
      the model already knows; this sees every benign image in time while each epoch stays
      short and balanced.
    With several processes (rank k of n, see train.py), each takes every n-th index of the same
    order, as torch's DistributedSampler does: n disjoint shares of one shuffled epoch.
    Call set_epoch first.
    """

    def __init__(self, labels, seed, balanced=False, neg_per_pos=None, rank=0, world_size=1):
        self.labels = torch.as_tensor(labels)
        self.seed, self.balanced, self.neg_per_pos = seed, balanced, neg_per_pos
        self.rank, self.world_size, self.epoch = rank, world_size, 0
        self.positives = self.labels.nonzero().flatten()
        self.negatives = (self.labels == 0).nonzero().flatten()
        self.size = len(self.labels)
        if neg_per_pos:
            self.size = len(self.positives) + min(len(self.negatives),
                                                  neg_per_pos * len(self.positives))

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return math.ceil(self.size / self.world_size)

    def __iter__(self):
        # One stream per (seed, epoch): the multiplier, larger than any run's epoch count, keeps
        # seed 1's epochs from replaying seed 0's later ones (seed * 10 + epoch would give seed 1
        # epoch 0 = seed 0 epoch 10).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.neg_per_pos:
            drawn = self.negatives[torch.randperm(len(self.negatives), generator=generator)]
            chosen = torch.cat([self.positives, drawn[:self.size - len(self.positives)]])
            order = chosen[torch.randperm(len(chosen), generator=generator)]
        elif self.balanced:
            weight_per_class = 1.0 / torch.bincount(self.labels, minlength=2).clamp(min=1)
            order = torch.multinomial(weight_per_class[self.labels], self.size, replacement=True,
                                      generator=generator)
        else:
            order = torch.randperm(self.size, generator=generator)
        padded = torch.cat([order, order[:len(self) * self.world_size - self.size]])  # equal shares
        return iter(padded[self.rank::self.world_size].tolist())


def build_loaders(train_set, val_set, sampler, batch_size, workers=0, seed=0):
    """DataLoaders: train (the images the sampler picks, augmented, in batches) and val (plain, in
    order).

    Class imbalance is answered at the sampling end here (EpochSampler); weighting the loss, the
    other answer, is chapters/imbalance.py's. The loaders batch: they ask the dataset for batch_size
    items and stack them.
    """
    # The generator seeds the worker processes' random augmentations: same seed, same augmentations.
    generator = torch.Generator().manual_seed(seed)
    # drop_last: each epoch's last, partial batch is left out (a batch of one image would leave
    # BatchNorm no statistics to take); the order is shuffled, so other images each epoch.
    train_loader = DataLoader(train_set, batch_size, sampler=sampler, generator=generator,
                              drop_last=len(sampler) > batch_size, **loader_options(workers))
    return train_loader, DataLoader(val_set, batch_size, shuffle=False, **loader_options(workers))


def loader_options(workers):
    """Worker processes decode images while the model computes, and stay alive from one epoch to the
    next (persistent) rather than starting again; pinned memory speeds copies to a GPU."""
    return dict(num_workers=workers, persistent_workers=workers > 0,
                pin_memory=torch.cuda.is_available())


if __name__ == "__main__":
    parser = Parser(__doc__)
    parser.add_argument("data", nargs="?", default="data",
                        help="folder with labels.csv (default: data)")
    parser.add_argument("--img-size", type=number(int, 32), default=128,
                        help="image side in pixels (default: 128)")
    parser.add_argument("--out", default=None,
                        help="where to draw the grid (default: DATA/augmentations.png)")
    args = parser.parse_args()
    # Any normalisation will do for a look; each model chooses its own (model.py).
    mean = std = (0.5, 0.5, 0.5)
    try:
        train_set = CustomDataset(read_split(args.data, "train"),
                                  build_transforms(args.img_size, train=True, mean=mean, std=std))
        val_set = CustomDataset(read_split(args.data, "val"),
                                build_transforms(args.img_size, train=False, mean=mean, std=std))
        sampler = EpochSampler(train_set.labels, seed=0)
        train_loader, val_loader = build_loaders(train_set, val_set, sampler, batch_size=8)
        images, labels = next(iter(train_loader))
        print(f"one training batch: images {tuple(images.shape)} {images.dtype}, "
              f"mean {images.mean():.2f} std {images.std():.2f}; labels {labels.tolist()}")
        out = args.out or Path(args.data) / "augmentations.png"
        draw_augmentation_grid(train_loader.dataset, val_loader.dataset.transform, out, mean, std)
    except DataError as error:
        stop(error)
    print(f"drew {out}")

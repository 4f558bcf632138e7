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
import os
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.transforms import v2

from helpers.charts import draw_augmentation_grid
from helpers.files import DataError, Parser, leads_outside, number, stop
from helpers.images import load_image
from prepare_data import deal_groups, evidence_columns  # how splits are dealt; what counts as evidence


class CustomDataset(Dataset):
    """Images listed in a table (labels.csv's columns: load_path, label, isic_id), as (tensor, label) pairs."""

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
    root = csv.parent
    for column in {"image_path", "cached_path"} & set(table.columns):
        for line, path in enumerate(table[column], start=2):
            if (isinstance(path, str) and ".." in path and not Path(path).is_absolute()
                    and leads_outside(root / path, root)):
                raise DataError(f"{csv}, line {line}: {column.replace('_', ' ')} {path} leads outside {root}; "
                                "fix or remove the row")
    table["image_path"] = [str(csv.parent / path) for path in table["image_path"]]  # absolute stays absolute
    # The copy to read: prepare_data.py's resized copy where it made one (see there), else the original.
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


# --- Batches: which training images an epoch visits, and the DataLoaders ---------------------------

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
        # One stream per (seed, epoch): the multiplier, larger than any run's epoch count, keeps seed 1's epochs
        # from replaying seed 0's later ones (seed * 10 + epoch would give seed 1 epoch 0 = seed 0 epoch 10).
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.neg_per_pos:
            drawn = self.negatives[torch.randperm(len(self.negatives), generator=generator)]
            chosen = torch.cat([self.positives, drawn[:self.size - len(self.positives)]])
            order = chosen[torch.randperm(len(chosen), generator=generator)]
        elif self.balanced:
            weight_per_class = 1.0 / torch.bincount(self.labels, minlength=2).clamp(min=1)
            order = torch.multinomial(weight_per_class[self.labels], self.size, replacement=True, generator=generator)
        else:
            order = torch.randperm(self.size, generator=generator)
        padded = torch.cat([order, order[:len(self) * self.world_size - self.size]])  # equal shares
        return iter(padded[self.rank::self.world_size].tolist())


def build_loaders(data_dir, img_size, batch_size, mean, std, balanced_sampler=False, workers=0, seed=0,
                  neg_per_pos=None, rank=0, world_size=1, fold=None, folds=1):
    """DataLoaders for training: train (augmented, shuffled) and val (plain, in order); with folds > 1,
    those of one fold of cross-validation (see train_and_val).

    How the training images are drawn (all once, class-balanced, or K benign per malignant) is up to
    EpochSampler: answers to class imbalance at the sampling end; weighting or focusing the loss, the
    other answers, live in train.py. rank and world_size give this process its share when several
    train together: every world_size-th validation image, from the rank-th on (train.py gathers them).
    """
    train_table, val_table = train_and_val(data_dir, fold, folds, seed)
    train_set = CustomDataset(train_table, build_transforms(img_size, train=True, mean=mean, std=std))
    val_set = CustomDataset(val_table[rank::world_size], build_transforms(img_size, train=False, mean=mean, std=std))
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
    the training process, see docs/SPEED.md)."""
    if requested is not None:
        return requested
    cores = os.cpu_count() or 1
    return min(8, cores - 1) if device.type == "cuda" else cores // 4


def loader_options(workers):
    """Worker processes decode images while the model computes, and stay alive from one epoch to the next
    (persistent) rather than starting again; pinned memory speeds copies to a GPU."""
    return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=torch.cuda.is_available())


# --- Cross-validation (train.py --folds K) --------------------------------------------------------------
# With a few hundred labels, 15 % of them (the val split) is too few to choose an epoch and a threshold
# on. Cross-validation pools the train and val splits and deals them into K folds; K models each train
# on K-1 folds and validate on the one left out. Every image then gets one honest prediction, from the
# model that never saw it, and the K models are averaged at test time. The test split stays out.

def cross_validation_folds(table, folds, seed):
    """The fold (0 to folds-1) of each row of the table. Whole groups (a lesion's or a patient's images,
    see prepare_data.py) go to one fold, or a model would validate on lesions it trained on; they are
    dealt as prepare_data.py deals its splits, class by class, so that each fold gets a K-th of each."""
    groups = table["group"] if "group" in table else table["isic_id"]
    return deal_groups(table.assign(group=groups), dict.fromkeys(range(folds), 1 / folds), seed).to_numpy()


def train_and_val(data_dir, fold=None, folds=1, seed=0):
    """The tables of training and validation images: the train and val splits, or with `folds` > 1 both
    pooled, fold number `fold` (1 to folds) validating and the others training."""
    if folds == 1:
        return read_split(data_dir, "train"), read_split(data_dir, "val")
    pool = pd.concat([read_split(data_dir, "train"), read_split(data_dir, "val")], ignore_index=True)
    fold_of = cross_validation_folds(pool, folds, seed)
    per_class = [len(set(fold_of[pool["label"] == label])) for label in (0, 1)]
    if min(per_class) < folds:  # then a fold would validate on one class only, or on nothing
        raise DataError(f"{Path(data_dir) / 'labels.csv'}: {folds} folds need both classes in every fold, but the "
                        f"train and val splits fill only {min(per_class)}; use fewer --folds")
    left_out = fold_of == fold - 1
    return pool[~left_out].reset_index(drop=True), pool[left_out].reset_index(drop=True)


# --- The metadata, as numbers ------------------------------------------------------------------------
# prepare_data.py carried each image's age, sex and body site (and ISIC 2024's measurements) into
# labels.csv, empty where unknown. A model weighs numbers, so a number stays a number (age in years) and
# a word becomes one column per word of the vocabulary, 1 where it applies and 0 elsewhere ("one-hot").
# Whatever is unknown is NaN: model.py's LateFusion reads NaN as "no evidence either way". A torso site
# also lights a "torso" column, so that an older export's plain "torso" shares what the sides teach.
#
# Where the images name their patient (ISIC 2024), each measurement also comes relative to that patient's
# other lesions: how many of the patient's standard deviations it lies from the patient's mean. A
# dermatologist calls it the "ugly duckling" sign: the mole unlike the patient's other moles is the
# suspect one, whatever its size in millimetres. It is computed on the images being scored, patient by
# patient, so it needs no label and travels to a new patient.
WORD_COLUMNS = ("sex", "site")
VS_PATIENT = " vs patient"


def metadata_encoding(table):
    """Which features the metadata of these (training) images gives: every evidence column with at least
    one value, each word column spelled out as one feature per word seen. None when there is no metadata."""
    features, vocabulary = [], {}
    patient = patients(table)
    several_lesions = patient is not None and patient.duplicated().any()  # someone to compare a lesion with
    for column in evidence_columns(table):
        values = table[column].dropna()
        if values.empty:
            continue
        if column in WORD_COLUMNS:
            words = {word for value in values for word in words_of(value)}
            vocabulary[column] = sorted(words)
            features += [f"{column}: {word}" for word in vocabulary[column]]
        else:
            features.append(column)
            if column != "age" and several_lesions:
                features.append(column + VS_PATIENT)
    return {"features": features, "vocabulary": vocabulary} if features else None


def metadata_fields(encoding):
    """The metadata columns an encoding reads (its features' sources): age, sex, site ..."""
    return list(dict.fromkeys(feature.removesuffix(VS_PATIENT).split(": ")[0] for feature in encoding["features"]))


def patients(table):
    """The patient of each row (labels.csv's patient, or a metadata CSV's patient_id), or None."""
    return table["patient"] if "patient" in table else table.get("patient_id")


def relative_to_patient(values, patient):
    """Each value minus the mean of its patient's values, in its patient's standard deviations (NaN for a
    patient with fewer than two known values, or all alike)."""
    values = pd.to_numeric(values, errors="coerce").astype(float)
    by_patient = values.groupby(patient)
    return ((values - by_patient.transform("mean")) / by_patient.transform("std").replace(0, math.nan)).tolist()


def words_of(value):
    """The one-hot columns a word lights: itself, and "torso" for a torso of any side."""
    return {value, "torso"} if str(value).endswith("torso") else {value}


def metadata_features(table, encoding):
    """An (images x features) float tensor of the encoding's features for each row of the table, NaN
    where a value is missing, the column is absent, or a word was never seen in training."""
    columns = []
    for feature in encoding["features"]:
        column, _, word = feature.removesuffix(VS_PATIENT).partition(": ")
        values = table[column] if column in table else pd.Series(math.nan, index=table.index)
        if feature.endswith(VS_PATIENT):
            patient = patients(table)
            columns.append(relative_to_patient(values, patient) if patient is not None else [math.nan] * len(table))
        elif word:  # one-hot: 1 where the word applies, 0 where another known word does, else missing
            known = set(encoding["vocabulary"][column])
            columns.append([math.nan if not isinstance(value, str) or value not in known
                            else float(word in words_of(value)) for value in values])
        else:
            columns.append(pd.to_numeric(values, errors="coerce").astype(float).tolist())
    return torch.tensor(columns, dtype=torch.float32).T.reshape(len(table), len(encoding["features"]))


if __name__ == "__main__":
    parser = Parser(__doc__)
    parser.add_argument("data", nargs="?", default="data", help="folder with labels.csv")
    parser.add_argument("--img-size", type=number(int, 32), default=128)
    parser.add_argument("--out", default=None, help="where to draw the grid (default: DATA/augmentations.png)")
    args = parser.parse_args()
    # Any normalisation will do for a look; each model chooses its own (model.py).
    mean = std = (0.5, 0.5, 0.5)
    try:
        train_loader, val_loader = build_loaders(args.data, args.img_size, 8, mean, std)
        images, labels = next(iter(train_loader))
        print(f"one training batch: images {tuple(images.shape)} {images.dtype}, "
              f"mean {images.mean():.2f} std {images.std():.2f}; labels {labels.tolist()}")
        out = args.out or Path(args.data) / "augmentations.png"
        draw_augmentation_grid(train_loader.dataset, val_loader.dataset.transform, out, mean, std)
    except DataError as error:
        stop(error)
    print(f"drew {out}")

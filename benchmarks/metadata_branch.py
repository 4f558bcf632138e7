"""The metadata inside the network: a small branch on age, sex and body site, trained end to end.

The project weighs the metadata by late fusion (chapters/metadata.py's LateFusion: a logistic regression on
the image model's held-out log-odds plus the standardised metadata). This benchmark measures the other
design under the same budget (benchmarks/quality.py's "budget" set-up: 400 HAM10000 images, split 280/60/60):

  image    -> EfficientNet-Lite0 (pretrained, head removed, its dropout 0.2) -> 1280 features --+
                                                                                                +-> Linear(1312, 2)
  metadata -> Linear(F, 32) -> BatchNorm1d -> ReLU -> Dropout(0.3)           ->   32 features --+

The metadata vector: chapters.metadata.metadata_features, each feature standardised with its mean and
standard deviation over the train and val images (as chapters.metadata.fit_late_fusion does), a missing
value set to 0 (the average), then one 0/1 "missing" indicator per field (age, sex, site), so that the
network can tell missing from average. During training each field of each image is hidden (0, indicator 1)
with probability 0.2: ISIC UDA has no site at all and half its ages missing, and a network that always saw
every field would not know what to make of their absence.

Training is train.py's default for the pretrained model: Adam, lr 3e-4, weight decay 1e-4, batch 32, a cosine
schedule stepped every batch over 15 epochs, 128 px, cross-entropy, the epoch with the best validation AUC
(8 views each) kept, stopping after 5 epochs without gain. The threshold is the one with the best balanced
accuracy on the validation predictions (evaluate.choose_threshold). Each seed's model is scored with
its 8 views (the mean probability; the metadata the same for every view) on the HAM10000 development and
test pools and ISIC UDA: AUC, and balanced accuracy at that threshold.

The data is quality.py's (benchmarks/out/quality: budget-<seed>, ham-dev, ham-test, uda); this script never
prepares any. A seed whose folder quality.py has not written yet is waited for (up to an hour).

Writes OUT/seed-<seed>.json (a finished seed's row, read back on a rerun instead of training again: delete it
to retrain), OUT/seed-<seed>.pt (its weights) and OUT/results.csv; prints a Markdown table of each seed and
the mean ± sd over seeds. --epochs and --limit (a quick check) write under other names: seed-0-epochs1-limit64.

Usage (on a 2-core CPU about 10 to 20 minutes per seed, most of it scoring 3,558 images 8 times):
  python benchmarks/metadata_branch.py                                    # seeds 0 1 2 into benchmarks/out/branch
  python benchmarks/metadata_branch.py --seeds 0 --epochs 1 --limit 64   # the plumbing, in a few minutes
"""
import argparse
import json
import math
import random
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from chapters.metadata import metadata_encoding, metadata_features, nan_std, standardise  # noqa: E402
from evaluate import choose_threshold, threshold_metrics  # noqa: E402
from train import roc_auc, summarise  # noqa: E402
from dataset import CustomDataset, EpochSampler, build_transforms, read_labels, read_split  # noqa: E402
from helpers.files import Progress  # noqa: E402
from model import build_model, dihedral_views, normalisation  # noqa: E402

QUALITY = ROOT / "benchmarks" / "out" / "quality"  # written by benchmarks/quality.py
TEST_SETS = {"dev": QUALITY / "ham-dev", "test": QUALITY / "ham-test", "UDA": QUALITY / "uda"}
MODEL, IMG_SIZE, EPOCHS, BATCH_SIZE = "efficientnet_lite0", 128, 15, 32  # train.py's defaults, pretrained
LR, WEIGHT_DECAY, PATIENCE = 3e-4, 1e-4, 5
BRANCH_WIDTH, BRANCH_DROPOUT, FIELD_DROPOUT = 32, 0.3, 0.2
WAIT_SECONDS, WAIT_LIMIT = 60, 60 * 60  # polling for a budget folder that quality.py is still preparing
CPU_CHUNK = 16  # images per forward pass when scoring on a CPU, as model.predict does (docs/SPEED.md)


# --- The metadata, as the network's input ------------------------------------------------------------------

class MetadataInput:
    """How a table's metadata becomes the branch's input: the standardised features (missing: 0), then one
    missing-indicator per field. Fitted on the train and val images, which needs no label."""

    def __init__(self, labelled):
        self.encoding = metadata_encoding(labelled)
        if self.encoding is None:
            raise ValueError("these images have no metadata: nothing for the branch to read")
        features = metadata_features(labelled, self.encoding)
        self.centre, self.scale = features.nanmean(0), nan_std(features).clamp(min=1e-6)
        # Each field (age, sex, site) with the columns of its features: a word field has one per word.
        names = [feature.partition(": ")[0] for feature in self.encoding["features"]]
        self.fields = {field: [i for i, name in enumerate(names) if name == field] for field in dict.fromkeys(names)}
        self.size = len(names) + len(self.fields)

    def __call__(self, table):
        """An (images x size) tensor: the standardised features, then 1 for each field that is missing."""
        raw = metadata_features(table, self.encoding)
        missing = torch.stack([raw[:, columns].isnan().all(1) for columns in self.fields.values()], dim=1)
        return torch.cat([standardise(raw, self.centre, self.scale), missing.float()], dim=1)

    def hide_fields(self, metadata, probability, generator):
        """A copy of a batch with each field of each image set to missing (0, indicator 1) at this probability."""
        metadata = metadata.clone()
        hidden = torch.rand(len(metadata), len(self.fields), generator=generator) < probability
        first_indicator = metadata.shape[1] - len(self.fields)
        for k, columns in enumerate(self.fields.values()):
            rows = hidden[:, k].nonzero().flatten()
            metadata[rows[:, None], torch.tensor(columns)] = 0.0
            metadata[rows, first_indicator + k] = 1.0
        return metadata

    def describe(self):
        return ", ".join(f"{field} ({len(columns)})" for field, columns in self.fields.items())


class ImageAndMetadata(Dataset):
    """(image tensor, metadata vector, label) for each row of a table: the image as dataset.CustomDataset
    reads it, the metadata as MetadataInput encodes it (all rows at once, up front)."""

    def __init__(self, table, transform, metadata_input):
        self.images = CustomDataset(table, transform)
        self.metadata = metadata_input(self.images.table)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        image, label = self.images[index]
        return image, self.metadata[index], label


# --- The network ---------------------------------------------------------------------------------------------

class MetadataBranchNet(nn.Module):
    """Pretrained EfficientNet-Lite0's pooled image features beside a small MLP's metadata features, one
    linear classifier on both. The backbone keeps its own dropout (0.2) on the image features."""

    def __init__(self, metadata_size):
        super().__init__()
        self.backbone = build_model(MODEL, pretrained=True)
        self.backbone._fc = nn.Identity()  # it now ends with its 1280 features
        self.branch = nn.Sequential(nn.Linear(metadata_size, BRANCH_WIDTH), nn.BatchNorm1d(BRANCH_WIDTH),
                                    nn.ReLU(), nn.Dropout(BRANCH_DROPOUT))
        self.head = nn.Linear(1280 + BRANCH_WIDTH, 2)

    def forward(self, images, metadata):
        return self.head(torch.cat([self.backbone(images), self.branch(metadata)], dim=1))


# --- Training --------------------------------------------------------------------------------------------------

def loaders(data, metadata_input, seed):
    """The training loader (augmented, drawn by a seeded EpochSampler) and the validation loader (plain)."""
    mean, std = normalisation(MODEL)
    train_set = ImageAndMetadata(read_split(data, "train"), build_transforms(IMG_SIZE, True, mean, std), metadata_input)
    val_set = ImageAndMetadata(read_split(data, "val"), build_transforms(IMG_SIZE, False, mean, std), metadata_input)
    sampler = EpochSampler(train_set.images.labels, seed)
    # drop_last as in dataset.build_loaders: a final batch of one image would break BatchNorm.
    train_loader = DataLoader(train_set, BATCH_SIZE, sampler=sampler, generator=torch.Generator().manual_seed(seed),
                              drop_last=len(sampler) > BATCH_SIZE)
    return train_loader, DataLoader(val_set, BATCH_SIZE, shuffle=False)


def train_one_epoch(model, loader, metadata_input, optimizer, scheduler, hiding):
    """One pass over the training images, each field hidden at random; the mean loss."""
    model.train()
    loss_function, total, seen = nn.CrossEntropyLoss(), 0.0, 0
    for images, metadata, labels in loader:
        metadata = metadata_input.hide_fields(metadata, FIELD_DROPOUT, hiding)
        loss = loss_function(model(images, metadata), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()  # the cosine schedule moves every batch
        total += loss.item() * len(labels)
        seen += len(labels)
    return total / seen


@torch.inference_mode()
def predict(model, loader):
    """P(malignant) for every image of the loader, in order (the mean over its 8 dihedral views, the metadata
    the same for each), and the labels."""
    model.eval()
    probabilities, labels, progress = [], [], Progress("scored", len(loader.dataset))
    for images, metadata, targets in loader:
        views = [torch.cat([model(part, meta) for part, meta in zip(view.split(CPU_CHUNK), metadata.split(CPU_CHUNK))])
                 .softmax(dim=1)[:, 1] for view in dihedral_views(images)]
        probabilities += torch.stack(views).mean(0).tolist()
        labels += targets.tolist()
        progress.update(len(labels))
    progress.close()
    return probabilities, labels


def fit(data, metadata_input, seed, epochs):
    """Train one model; (the model with its best epoch's weights, that epoch's validation summary, history)."""
    random.seed(seed)
    torch.manual_seed(seed)  # the new layers' initial weights and the augmentations
    train_loader, val_loader = loaders(data, metadata_input, seed)
    model = MetadataBranchNet(metadata_input.size)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    hiding = torch.Generator().manual_seed(seed)  # which fields are hidden, image by image
    best, history = {"epoch": 0, "score": -math.inf}, []
    for epoch in range(1, epochs + 1):
        started = time.time()
        train_loader.sampler.set_epoch(epoch)  # this epoch's order: from (seed, epoch)
        train_loss = train_one_epoch(model, train_loader, metadata_input, optimizer, scheduler, hiding)
        val = summarise(*predict(model, val_loader))
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"], "val_auc": val["auc"]})
        print(f"  epoch {epoch:2d}/{epochs}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
              f"val AUC {val['auc']:.3f}  {time.time() - started:5.1f} s", flush=True)
        if val["score"] > best["score"]:
            weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
            best = {"epoch": epoch, "score": val["score"], "weights": weights, "val": val}
        if epoch - best["epoch"] >= PATIENCE:
            print(f"  no improvement for {PATIENCE} epochs: stopping early", flush=True)
            break
    model.load_state_dict(best["weights"])
    return model, best, history


# --- Scoring ---------------------------------------------------------------------------------------------------

def score(model, metadata_input, folder, threshold, limit=None):
    """AUC, and the metrics at the threshold, on the images of a test folder (the first `limit` of them)."""
    table = read_split(folder, "test")
    table = table.head(limit) if limit else table
    transform = build_transforms(IMG_SIZE, False, *normalisation(MODEL))
    probabilities, labels = predict(model, DataLoader(ImageAndMetadata(table, transform, metadata_input), BATCH_SIZE))
    at_threshold = threshold_metrics(labels, probabilities, threshold)
    return {"auc": roc_auc(labels, probabilities), "n": len(labels),
            **{key: at_threshold[key] for key in ("balanced_accuracy", "recall", "specificity")}}


def measure(seed, data, epochs, limit, weights_path):
    """One seed: train on its budget folder, choose the threshold on val, score the three test sets."""
    table = read_labels(data)
    metadata_input = MetadataInput(table[table["split"].isin(["train", "val"])])
    print(f"seed {seed}: {data}, metadata features {metadata_input.describe()} + {len(metadata_input.fields)} "
          f"missing-indicators = {metadata_input.size} inputs", flush=True)
    started, cpu_started = time.time(), time.process_time()
    model, best, history = fit(data, metadata_input, seed, epochs)
    # Wall-clock minutes, as quality.py reports them, and this process's CPU minutes (all its threads), which
    # say more when other work shares the cores.
    train_minutes, cpu_minutes = (time.time() - started) / 60, (time.process_time() - cpu_started) / 60
    torch.save(best["weights"], weights_path)
    threshold = choose_threshold(best["val"]["labels"], best["val"]["probabilities"])
    row = {"seed": seed, "best epoch": best["epoch"], "epochs trained": len(history), "val auc": best["val"]["auc"],
           "threshold": threshold, "train minutes": train_minutes, "train cpu minutes": cpu_minutes}
    started = time.time()
    for name, folder in TEST_SETS.items():
        metrics = score(model, metadata_input, folder, threshold, limit)
        row.update({f"{name} {key}": value for key, value in metrics.items()})
        print(f"  {name}: AUC {metrics['auc']:.3f}, balanced accuracy {metrics['balanced_accuracy']:.3f} "
              f"(n = {metrics['n']})", flush=True)
    row["score minutes"] = (time.time() - started) / 60
    return {**row, "val auc by epoch": [entry["val_auc"] for entry in history]}


def wait_for(labels_csv):
    """True once quality.py has written this labels.csv, False after WAIT_LIMIT seconds without it."""
    started = time.time()
    while not labels_csv.exists():
        waited = time.time() - started  # by the clock: a sleep can last longer than asked on a busy machine
        if waited >= WAIT_LIMIT:
            return False
        print(f"waiting for {labels_csv} (benchmarks/quality.py writes it), {waited / 60:.0f} min so far", flush=True)
        time.sleep(WAIT_SECONDS)
    return True


# --- The report --------------------------------------------------------------------------------------------

COLUMNS = {"dev auc": "dev AUC", "test auc": "test AUC", "test balanced_accuracy": "test balanced acc.",
           "UDA auc": "UDA AUC", "UDA balanced_accuracy": "UDA balanced acc.", "train minutes": "train minutes"}


def print_table(table):
    """A Markdown table: one row per seed, then the mean ± sd over seeds."""
    print("| seed | best epoch | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for _, row in table.iterrows():
        cells = [f"{row[c]:.1f}" if c == "train minutes" else f"{row[c]:.3f}" for c in COLUMNS]
        print(f"| {int(row['seed'])} | {int(row['best epoch'])} | " + " | ".join(cells) + " |")
    sd = (lambda values: statistics.stdev(values) if len(values) > 1 else 0.0)
    cells = [f"{table[c].mean():.{1 if c == 'train minutes' else 3}f} ± {sd(table[c]):.{1 if c == 'train minutes' else 3}f}"
             for c in COLUMNS]
    print("| mean ± sd | | " + " | ".join(cells) + " |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "branch")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"at most this many epochs (default {EPOCHS})")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N images of each test set")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # A quick check (--epochs, --limit) is kept apart from the real measurement.
    suffix = (f"-epochs{args.epochs}" if args.epochs != EPOCHS else "") + (f"-limit{args.limit}" if args.limit else "")

    rows = []
    for seed in args.seeds:
        saved = args.out / f"seed-{seed}{suffix}.json"
        if not saved.exists():
            data = QUALITY / f"budget-{seed}"
            if not wait_for(data / "labels.csv"):
                print(f"{data / 'labels.csv'} did not appear within {WAIT_LIMIT // 60} minutes: stopping at seed {seed}")
                break
            row = measure(seed, data, args.epochs, args.limit, args.out / f"seed-{seed}{suffix}.pt")
            saved.write_text(json.dumps(row, indent=1))
        rows.append(json.loads(saved.read_text()))
        print(f"seed {seed}: best epoch {rows[-1]['best epoch']}, test AUC {rows[-1]['test auc']:.3f}, "
              f"UDA AUC {rows[-1]['UDA auc']:.3f} ({rows[-1]['train minutes']:.1f} min training)", flush=True)
    if not rows:
        sys.exit("no seed finished")
    table = pd.DataFrame(rows).drop(columns="val auc by epoch")
    table.to_csv(args.out / f"results{suffix}.csv", index=False)
    print(f"\n## Metadata branch (EfficientNet-Lite0 + MLP on age, sex, site), budget set-up, "
          f"{len(rows)} seed{'s' * (len(rows) > 1)}\n")
    print_table(table)


if __name__ == "__main__":
    main()

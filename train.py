r"""Step 4 of 5: train a model on the train split, keep the epoch that does best on the val split.

The loop is the classic one: for each batch, predict, measure the error with cross-entropy, let
autograd compute how every weight should move, and let Adam move them. After each epoch the model is
scored on the validation images, which it never trains on, by the area under its ROC curve (defined
here, where it is first needed); the epoch with the best validation AUC is kept, and training stops
early once that has not improved for --patience epochs (0: never, and the last epoch is kept). The
test split stays untouched until evaluate.py.

Writes a checkpoint (default checkpoints/<model>.pt, or --out) after every epoch: the best weights
and what evaluate.py needs to use them (model, image size, normalisation, validation predictions to
choose a threshold from, these arguments) and, until the run ends, the state to carry on from
(train.py --resume CKPT, the command an interrupted run prints). Beside it, named after it:
-log.csv and -curves.png (how training went), -augmentations.png (what it saw). Beyond the lesson,
each chapter adds its own options (--help lists them under its name).

Examples:
  python train.py                                          # the baseline CNN on data/
  python train.py --model resnet --epochs 20
  python train.py --model efficientnet_lite0 --pretrained  # ImageNet weights, offline: use this one
  python train.py --model efficientnet_lite0 --pretrained --seed 1 \
      --out checkpoints/lite0-1.pt                         # a second seed, to average
  python train.py --dry-run --out checkpoints/dry-run.pt   # one batch, one epoch: test the plumbing
"""
import argparse
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from chapters import (calibration, cross_validation, imbalance, init_from, linear_probe, metadata,
                      novelty)
from chapters.hardware import Hardware
from dataset import (CustomDataset, EpochSampler, build_loaders, build_transforms, read_labels,
                     read_split)
from helpers import distributed, resume
from helpers.charts import draw_augmentation_grid, draw_curves
from helpers.files import DataError, Parser, Progress, number, save_atomically, stop
from model import (MODEL_NAMES, build_model, copy_of_weights, normalisation, predict,
                   read_checkpoint, save_checkpoint)


# --- One epoch of training ------------------------------------------------------------------------

def train_one_epoch(run, hardware, dry_run=False):
    """One pass over the training images; returns (mean loss, images seen)."""
    model, optimizer = run.model, run.optimizer
    model.train()  # dropout on, batch norm learns its statistics
    total_loss, seen = 0.0, 0
    progress = Progress("trained on", len(run.train_loader.sampler))
    for images, labels in run.train_loader:
        images = images.to(hardware.device, non_blocking=True)
        labels = labels.to(hardware.device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with hardware.autocast():  # 32-bit arithmetic, unless --precision asks for 16 (hardware.py)
            loss = run.loss_function(model(images), labels)
        if run.scaler.is_enabled():  # fp16 only: PyTorch's AMP recipe, the loss scaled up first
            run.scaler.scale(loss).backward()
            run.scaler.step(optimizer)
            run.scaler.update()
        else:
            loss.backward()   # gradients of the loss with respect to every weight
            optimizer.step()  # move each weight a little against its gradient
        run.scheduler.step()  # and adjust the step size for the next batch
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        progress.update(seen)
        if dry_run:
            break
    progress.close()
    # With torchrun: every process takes the mean loss, and rank 0's batch-norm statistics.
    loss = distributed.agree_after_epoch(model, total_loss / seen, hardware.world_size,
                                         hardware.device)
    return loss, seen * hardware.world_size


def loss_for(name, weighted, train_labels, device):
    """Cross-entropy: -log of the probability given to the true class. It takes the logits and
    computes their log-softmax itself, exactly (log-sum-exp). Focal loss and class weights are for
    rare classes (chapters/imbalance.py)."""
    weight = imbalance.class_weights(train_labels, device) if weighted else None
    if name == "focal":
        return lambda logits, labels: imbalance.focal_loss(logits, labels, weight)
    return nn.CrossEntropyLoss(weight=weight)


# --- Validation: the ROC curve, its area, and how good this epoch is ------------------------------

def roc_curve(labels, probabilities):
    """The ROC curve as (fpr, tpr, thresholds), from (0, 0) to (1, 1); labels 0/1 (1 = malignant).

    Lower the threshold past each distinct score in turn and count who is now called malignant:
    the true positive rate (tpr) is the share of malignant images caught, the false positive rate
    (fpr) the share of benign ones called malignant. Images with equal scores cross together, so a
    tie moves the curve diagonally: that is how ties count half."""
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
    """Area under the ROC curve, by the trapezoid rule: the chance that a random malignant image
    scores above a random benign one (0.5 is guessing, 1 is perfect). It needs no threshold, which
    is why it judges each epoch. NaN when only one class is present."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    if not fpr:
        return math.nan
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))


def summarise(probabilities, labels):
    """Validation predictions with their loss (cross-entropy), AUC, accuracy (at 0.5) and `score`,
    the figure that chooses the epoch: the AUC, or -loss where the AUC is undefined (one
    class only)."""
    loss = -sum(math.log(max(p if y else 1 - p, 1e-12))
                for p, y in zip(probabilities, labels)) / len(labels)
    auc = roc_auc(labels, probabilities)
    accuracy = sum((p >= 0.5) == y for p, y in zip(probabilities, labels)) / len(labels)
    return {"probabilities": probabilities, "labels": labels, "loss": loss, "auc": auc,
            "accuracy": accuracy, "score": -loss if math.isnan(auc) else auc}


def validate(run, hardware, tta):
    """Score the validation images (with torchrun each process its share, then all share theirs):
    the predictions, their loss, AUC and accuracy, and the `score` that chooses the epoch."""
    with hardware.autocast():
        probabilities, labels = predict(distributed.unwrap(run.model), run.val_loader,
                                        hardware.device, tta)
    gathered = [distributed.gather(values, hardware.world_size)
                for values in (probabilities, labels)]
    return {"isic_id": run.val_ids, "views": 8 if tta else 1, **summarise(*gathered)}


# --- The training of one model: the loop, epoch by epoch ------------------------------------------

def fit(run, hardware, epochs, patience, tta, save, dry_run=False):
    """Train run.model epoch by epoch, validating after each, and keep the best epoch's weights;
    save(best, history, finished) after every epoch. Returns (best, history)."""
    best, history = run.best, run.history  # (carried on by --resume: the epochs done so far)
    for epoch in range(len(history) + 1, epochs + 1):
        started = time.time()
        run.train_loader.sampler.set_epoch(epoch)  # the epoch's images and order: (seed, epoch)
        train_loss, seen = train_one_epoch(run, hardware, dry_run)
        # --patience 0 keeps the last epoch whatever validation says: the epochs before it are
        # scored in one view, for the curves alone, and the kept one in its 8 (TTA), as used.
        val = validate(run, hardware, tta and (patience > 0 or epoch == epochs))
        log_epoch(history, epoch, epochs, train_loss, val, time.time() - started, seen, run)
        if val["score"] > best["score"] or patience == 0:  # --patience 0: keep the last
            best = {"epoch": epoch, "score": val["score"], "val": val,
                    "weights": copy_of_weights(run.network)}  # safe from further training
        finished = epoch == epochs or 0 < patience <= epoch - best["epoch"]
        save(best, history, finished)
        if finished:
            break
    return best, history


def log_epoch(history, epoch, epochs, train_loss, val, seconds, images, run):
    """One row of the history (the log's, and the curves'), printed."""
    history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"], "val_auc": val["auc"],
                    "val_views": val["views"], "seconds": seconds,
                    "images_per_second": images / seconds, "lr": run.scheduler.get_last_lr()[0]})
    print(f"epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
          f"val acc {val['accuracy']:.3f}  val AUC {val['auc']:.3f}  {seconds:5.1f} s  "
          f"{images / seconds:5.0f} images/s")


def train_model(args, hardware, train_table, val_table, out, interrupted=None, previous=None,
                draw=True, **info):
    """Train one model on these tables, saved to `out` (with `info`) after every epoch; with
    --resume, from the interrupted run's state (helpers/resume.py)."""
    # Same seed, same data -> same initial weights, same batches, same augmentations, same result.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    run = build_run(args, hardware, train_table, val_table, draw)
    write = (lambda *saved: save_run(args, out, *saved, **info)) if hardware.rank == 0 else None
    with resume.resumable(run, interrupted, out, write, previous) as save:
        best, history = fit(run, hardware, args.epochs, args.patience, args.tta, save, args.dry_run)
    if history[-1]["epoch"] < args.epochs:
        print(f"no improvement for {args.patience} epochs: stopped early")
    print(f"best epoch {best['epoch']} (val AUC {best['val']['auc']:.3f}) saved to {out}")


# --- What the training of one model is made of ----------------------------------------------------

@dataclass
class Run:
    """One model's training, as build_run makes it, and how far it has got."""
    network: nn.Module       # the whole network, whose weights are saved
    model: nn.Module         # what learns: the network, or its head (--freeze-backbone); torchrun
                             # wraps it to average the gradients of every step
    train_loader: DataLoader
    val_loader: DataLoader
    val_ids: list            # the validation images, in the order they are scored
    loss_function: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    history: list = field(default_factory=list)  # a row per epoch done
    best: dict = field(default_factory=lambda: {"epoch": 0, "score": -math.inf})


def build_run(args, hardware, train_table, val_table, draw=True):
    """The data, the model and how it learns, for one model."""
    mean, std = normalisation(args.model)  # what the pretrained weights expect
    train_set = CustomDataset(train_table,
                              build_transforms(args.img_size, train=True, mean=mean, std=std))
    # With torchrun each process scores every world_size-th validation image (gathered after).
    val_set = CustomDataset(val_table[hardware.rank::hardware.world_size],
                            build_transforms(args.img_size, train=False, mean=mean, std=std))
    sampler = EpochSampler(train_set.labels, args.seed, args.balanced_sampler, args.neg_per_pos,
                           hardware.rank, hardware.world_size)
    train_loader, val_loader = build_loaders(train_set, val_set, sampler, args.batch_size,
                                             args.workers, args.seed)
    labels = sampler.labels
    network = build_model(args.model, args.pretrained and not args.start)
    network = init_from.load(network, args).to(hardware.device)  # --init-from: a start's weights
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if hardware.rank == 0 and draw:  # a picture of what it sees
        picture = args.out.with_name(f"{args.out.stem}-augmentations.png")
        draw_augmentation_grid(train_set, val_set.transform, picture, mean, std, seed=args.seed)
    val_ids = distributed.gather(val_set.table["isic_id"].tolist(), hardware.world_size)
    model = network
    if args.freeze_backbone:  # only the head learns, on features computed once
        model, train_loader, val_loader = linear_probe.setup(network, train_loader, val_loader,
                                                             args.batch_size, args.seed,
                                                             hardware.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # A cosine schedule, stepped every batch: large steps early, ever smaller ones, 0 at the end.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                           T_max=args.epochs * len(train_loader))
    scaler = torch.amp.GradScaler(hardware.device.type, enabled=hardware.precision == "fp16")
    print(f"{args.model}: {sum(p.numel() for p in network.parameters()) / 1e6:.1f} M parameters, "
          f"on {hardware}; {len(labels)} training images ({int(labels.sum())} malignant), "
          f"{len(val_ids)} validation images; {len(train_loader.sampler) * hardware.world_size} "
          "training images per epoch")
    loss_function = loss_for(args.loss, args.class_weights, labels, hardware.device)
    return Run(network, distributed.wrap(model, hardware.device, hardware.world_size), train_loader,
               val_loader, val_ids, loss_function, optimizer, scheduler, scaler)


# --- Saving ---------------------------------------------------------------------------------------

def save_run(args, out, best, history=(), training_state=None, **info):
    """The checkpoint (the best epoch's weights, what evaluate.py needs and, until the run is
    finished, the state to resume from), the log and the curves; returns the validation's summary.
    Atomic: a crash mid-save keeps the previous files."""
    val, (mean, std) = best["val"], normalisation(args.model)
    # As validate summed them up; a cross-validated run's joined predictions are summed up here.
    summary = val if "auc" in val else summarise(val["probabilities"], val["labels"])
    save_checkpoint(out, best["weights"], model=args.model, img_size=args.img_size, tta=args.tta,
                    mean=mean, std=std, epoch=best["epoch"],
                    val_metrics={key: summary[key] for key in ("auc", "loss", "accuracy")},
                    # evaluate.py chooses the decision threshold (or averages models) from these
                    val_predictions={"isic_id": val["isic_id"], "label": val["labels"],
                                     "image_probability": val["probabilities"]},
                    args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    **info, **({"training_state": training_state} if training_state else {}))
    if history:
        stem = str(out.with_suffix(""))
        save_atomically(f"{stem}-log.csv",
                        lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
        loss_name = ("class-weighted " if args.class_weights else "") + args.loss
        draw_curves(history, best["epoch"], f"{stem}-curves.png", train_loss=loss_name)
    return summary


def fuse_metadata(args):
    """The metadata's evidence beside the image model's, fitted on the finished checkpoint."""
    checkpoint = read_checkpoint(args.out)
    picture = args.out.with_name(f"{args.out.stem}-metadata.png")
    fusion = metadata.add_late_fusion(checkpoint, read_labels(args.data), picture)
    if fusion:
        held_out = checkpoint["val_predictions"]
        alone, fused = (roc_auc(held_out["label"], held_out[key])
                        for key in ("image_probability", "fused_probability"))
        print(f"late fusion with {', '.join(metadata.metadata_fields(fusion))}: learnt on "
              f"{fusion['fitted_on']} labelled images, set on {fusion['bias_fitted_on']} held-out "
              f"ones, where the AUC is {alone:.3f} for the image alone and {fused:.3f} with the "
              "metadata")
        save_checkpoint(args.out, checkpoint.pop("state_dict"), **checkpoint)
        print(f"saved to {args.out}")


# --- The command line -----------------------------------------------------------------------------

def parse_arguments():
    """The command line (or, with --resume, the interrupted run's) and the run to resume."""
    parser = Parser(__doc__)
    add = parser.add_argument
    add("--data", default="data", help="folder with labels.csv from prepare_data.py")
    add("--model", default="baseline", choices=("baseline", "resnet", *MODEL_NAMES[1:]),
        help="resnet means resnet18")
    add("--pretrained", action="store_true", help="start from ImageNet weights")
    add("--epochs", type=number(int, 1), default=15, help="passes over the training images")
    add("--batch-size", type=number(int, 2), default=32, help="images per training step")
    add("--lr", type=number(float, 0, low_open=True), default=None,
        help="learning rate (default 1e-3; 3e-4 with --pretrained, which big steps would spoil)")
    add("--weight-decay", type=number(float, 0), default=1e-4,
        help="Adam's L2 penalty, pulling every weight towards 0 a little at each step")
    add("--img-size", type=number(int, 32), default=128,
        help="image side in pixels, at least 32; 128 keeps a CPU fast, 224 is ResNet's native size")
    add("--tta", action=argparse.BooleanOptionalAction, default=None, help="score each val and "
        "test image as the mean of its 8 flips and quarter turns (default: on, but for a probe)")
    add("--patience", type=number(int, 0), default=5, metavar="N", help="stop after N epochs "
        "without gain; 0: never, and keep the last (few val images pick the best by chance)")
    add("--seed", type=int, default=0, help="seed of the weights, the order, the augmentation")
    add("--out", default=None, help="checkpoint path (default: checkpoints/<model>.pt)")
    add("--resume", metavar="CKPT", help="carry on an interrupted run, with its own arguments")
    add("--dry-run", action="store_true", help="one batch of one epoch, to test the set-up")
    for chapter in (cross_validation, init_from, metadata, novelty, linear_probe, imbalance,
                    Hardware):
        chapter.add_training_options(parser)
    args, interrupted = resume.parse(parser)  # with --resume, the interrupted run's arguments
    init_from.settle(args, parser)  # --init-from: the start read, counting as --pretrained
    for chapter in (linear_probe, imbalance):
        chapter.refuse_conflicts(args, parser)
    args.tta = not args.freeze_backbone if args.tta is None else args.tta
    args.lr = args.lr or (3e-4 if args.pretrained else 1e-3)
    args.out = Path(args.out or Path("checkpoints") / f"{args.model}.pt")
    args.epochs = 1 if args.dry_run else args.epochs
    return args, interrupted


def main():
    args, interrupted = parse_arguments()
    try:
        hardware = Hardware.choose(args.device, args.precision, args.workers)
        args.workers = hardware.workers  # saved with the run's arguments, for --resume
        resume.stop_on_sigterm()
        if args.folds > 1:  # K models, each validated on a K-th, as one checkpoint
            cross_validation.train_folds(args, hardware, interrupted, train_model, save_run)
        else:
            tables = read_split(args.data, "train"), read_split(args.data, "val")
            train_model(args, hardware, *tables, args.out, interrupted)
        if args.metadata and hardware.rank == 0 and not args.dry_run:
            fuse_metadata(args)  # the metadata's evidence beside the image's
        if hardware.rank == 0 and not args.dry_run:  # what its probabilities assume, and
            calibration.record_prevalence(args)      # what its training images look like
            novelty.add_statistics(args, hardware.device)
            init_from.record(args)  # --init-from: the start named, its weights dropped
    except (DataError, ValueError) as error:  # bad data (an image gone bad since it was prepared)
        stop(error)
    distributed.finish(hardware.world_size)


if __name__ == "__main__":
    main()

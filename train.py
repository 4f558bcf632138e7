r"""Step 4 of 5: train a model on the train split, keep the epoch that does best on the val split.

The loop is the classic one: for each batch, predict, measure the error with cross-entropy, let
autograd compute how every weight should move, and let Adam move them. After each epoch the model is
scored on the validation images, which it never trains on; the epoch with the best validation AUC is
kept, and training stops early once that has not improved for --patience epochs (0: never, and the
last epoch is kept). The test split stays untouched until evaluate.py.
With a few hundred labels, --folds K trains K models, each validated on a different K-th of the
train and val images, and keeps them as one (chapters/cross_validation.py). Once the image model is
trained, and where labels.csv has age, sex or body site, a logistic regression on them adds its
evidence to the image model's (chapters/metadata.py; --no-metadata: not).

Writes a checkpoint (default checkpoints/<model>.pt) after every epoch: the best weights, what
evaluate.py needs to use them (model, image size, normalisation, validation predictions to choose a
threshold from, these arguments, the metadata's fusion) and, until the run ends, the state to resume
from. Beside it: <model>-log.csv, <model>-curves.png (how training went), <model>-augmentations.png
(what it saw) and <model>-metadata.png (what the metadata does to the odds).

Examples:
  python train.py                                          # the baseline CNN on data/
  python train.py --model resnet --epochs 20
  python train.py --model resnet --pretrained --img-size 224 --device cuda \
      --out checkpoints/resnet224.pt
  python train.py --model efficientnet_lite0 --pretrained  # ImageNet weights, offline: use this one
  python train.py --model efficientnet_lite0 --pretrained --seed 1 \
      --out checkpoints/lite0-1.pt                         # to average
  python train.py --model efficientnet_lite0 --pretrained --freeze-backbone --lr 3e-3 --epochs 100 \
      --out checkpoints/probe.pt                           # a linear probe: seconds on a CPU
  python train.py --model efficientnet_lite0 --pretrained --folds 5 --patience 0 \
      --out checkpoints/lite0-folds5.pt                    # a few hundred labels: 5 folds
  python train.py --dry-run --out checkpoints/dry-run.pt   # one batch, one epoch: test the plumbing
  python train.py --resume checkpoints/baseline.pt         # carry on after Ctrl-C, a kill or crash
  python train.py --data data/isic2024 --neg-per-pos 10 \
      --out checkpoints/isic2024.pt                        # 1 in 1,000 malignant
  torchrun --nproc_per_node=4 train.py --model resnet --pretrained \
      --out checkpoints/resnet-ddp.pt                      # 4 GPUs
"""
import argparse
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from chapters import (calibration, cross_validation, imbalance, linear_probe, metadata,
                      novelty)
from chapters.hardware import PRECISIONS, Hardware
from chapters.metrics import summarise
from dataset import (CustomDataset, EpochSampler, build_loaders, build_transforms, read_labels,
                     read_split)
from helpers import distributed, resume
from helpers.charts import draw_augmentation_grid, draw_curves
from helpers.files import DataError, Parser, Progress, number, save_atomically, stop
from model import build_model, normalisation, predict, read_checkpoint, save_checkpoint


# --- One epoch of training ------------------------------------------------------------------------

def train_one_epoch(run, hardware, dry_run=False):
    """One pass over this process's training images; returns (mean loss, images seen in all)."""
    run.trainer.train()  # dropout on, batch norm learns its statistics
    total_loss, seen = 0.0, 0
    progress = Progress("trained on", len(run.train_loader.sampler))
    for images, labels in run.train_loader:
        images = images.to(hardware.device, non_blocking=True)
        labels = labels.to(hardware.device, non_blocking=True)
        with hardware.autocast():
            loss = run.loss_function(run.trainer(images), labels)
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()  # gradients of the loss with respect to every weight
        run.scaler.step(run.optimizer)     # move each weight a little against its gradient
        run.scaler.update()                # (fp16 only: a smaller scale if gradients overflowed)
        run.scheduler.step()               # and adjust the step size for the next batch
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        progress.update(seen)
        if dry_run:
            break
    progress.close()
    # With torchrun: every process takes the mean loss, and rank 0's batch-norm statistics.
    loss = distributed.agree_after_epoch(run.model, total_loss / seen, hardware.world_size,
                                         hardware.device)
    return loss, seen * hardware.world_size


def loss_for(name, weighted, train_labels, device):
    """Cross-entropy: -log of the probability given to the true class; or focal loss. Weighted
    (--class-weights), a malignant image counts benign/malignant times as much
    (chapters/imbalance.py). Both take the logits: cross-entropy computes its log-softmax itself,
    exactly (log-sum-exp)."""
    weight = imbalance.class_weights(train_labels, device) if weighted else None
    if name == "focal":
        return lambda logits, labels: imbalance.focal_loss(logits, labels, weight)
    return nn.CrossEntropyLoss(weight=weight)


# --- Validation: how good is this epoch? ----------------------------------------------------------

def validate(run, hardware, tta):
    """Score this process's share of the validation images, then all share theirs: the predictions,
    their loss, AUC and accuracy, and the `score` that chooses the epoch (chapters/metrics.py)."""
    with hardware.autocast():
        probabilities, labels = predict(run.learner, run.val_loader, hardware.device, tta)
    gathered = [distributed.gather(values, hardware.world_size)
                for values in (probabilities, labels)]
    return {"isic_id": run.val_ids, "views": 8 if tta else 1, **summarise(*gathered)}


# --- The training of one model: the loop, epoch by epoch ------------------------------------------

def fit(args, fold, interrupted, hardware):
    """Train one model (with --folds, that of fold number `fold`), saved after every epoch."""
    out = resume.fold_path(args.out, fold)
    if fold:
        print(f"fold {fold} of {args.folds}")
    # Same seed, same data -> same initial weights, same batches, same augmentations, same result.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    run = build_run(args, fold, hardware)
    best, history = {"epoch": 0, "score": -math.inf}, []
    if interrupted:  # --resume: carry on where the interrupted run stopped
        best, history = resume.restore(interrupted, run)

    with resume.on_interrupt(args.out, fold, saved_epoch=len(history)) as saved:
        for epoch in range(len(history) + 1, args.epochs + 1):
            started = time.time()
            run.train_loader.sampler.set_epoch(epoch)  # the epoch's images and order: (seed, epoch)
            train_loss, seen = train_one_epoch(run, hardware, args.dry_run)
            # --patience 0 keeps the last epoch whatever validation says: the epochs before it are
            # scored in one view, for the curves alone, and the kept one in its 8 (TTA), as used.
            val = validate(run, hardware, args.tta and (args.patience > 0 or epoch == args.epochs))
            log_epoch(history, epoch, args.epochs, train_loss, val,
                      time.time() - started, seen, run)

            weights = copy_of_weights(run.model)  # safe from further training
            if val["score"] > best["score"] or args.patience == 0:  # --patience 0: keep the last
                best = {"epoch": epoch, "score": val["score"], "weights": weights, "val": val}
            finished = epoch == args.epochs or 0 < args.patience <= epoch - best["epoch"]
            if hardware.rank == 0:  # the other processes hold the same: one copy is written
                carry_on = None if finished else resume.training_state(weights, run, history, best)
                save_run(args, out, best, history, carry_on, fold)
                saved.epoch = epoch
            if finished:
                break
    if history[-1]["epoch"] < args.epochs:
        print(f"no improvement for {args.patience} epochs: stopped early")
    print(f"best epoch {best['epoch']} (val AUC {best['val']['auc']:.3f}) saved to {out}")


def log_epoch(history, epoch, epochs, train_loss, val, seconds, images, run):
    """One row of the history (the log's, and the curves'), printed."""
    history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"], "val_auc": val["auc"],
                    "val_views": val["views"], "seconds": seconds,
                    "images_per_second": images / seconds, "lr": run.scheduler.get_last_lr()[0]})
    print(f"epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
          f"val acc {val['accuracy']:.3f}  val AUC {val['auc']:.3f}  {seconds:5.1f} s  "
          f"{images / seconds:5.0f} images/s")


# --- What the training of one model is made of ----------------------------------------------------

@dataclass
class Run:
    """One model's training, as build_run makes it."""
    model: nn.Module         # the network, saved after every epoch
    learner: nn.Module       # what learns: the model, or with --freeze-backbone its head alone
    trainer: nn.Module       # the learner as it trains (with torchrun: averaging gradients)
    train_loader: DataLoader
    val_loader: DataLoader
    val_ids: list            # the validation images, in the order they are scored
    loss_function: object
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler


def build_loaders_for(args, fold, hardware):
    """The train and val loaders of one model: the splits, or with --folds that fold's tables."""
    mean, std = normalisation(args.model)  # what the pretrained weights expect
    if fold:  # cross-validation: this fold validates, the others train
        train_table, val_table = cross_validation.train_and_val(args.data, fold, args.folds,
                                                                args.seed)
    else:
        train_table, val_table = read_split(args.data, "train"), read_split(args.data, "val")
    train_set = CustomDataset(train_table,
                              build_transforms(args.img_size, train=True, mean=mean, std=std))
    # With torchrun each process scores every world_size-th validation image (gathered after).
    val_set = CustomDataset(val_table[hardware.rank::hardware.world_size],
                            build_transforms(args.img_size, train=False, mean=mean, std=std))
    sampler = EpochSampler(train_set.labels, args.seed, args.balanced_sampler, args.neg_per_pos,
                           hardware.rank, hardware.world_size)
    return build_loaders(train_set, val_set, sampler, args.batch_size, args.workers, args.seed)


def build_run(args, fold, hardware):
    """The data, the model and how it learns, for one model (with --folds, that of fold `fold`)."""
    train_loader, val_loader = build_loaders_for(args, fold, hardware)
    labels = train_loader.sampler.labels
    model = build_model(args.model, args.pretrained).to(hardware.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if hardware.rank == 0 and fold in (None, 1):  # one picture of what it sees, for all folds
        picture = args.out.with_name(f"{args.out.stem}-augmentations.png")
        draw_augmentation_grid(train_loader.dataset, val_loader.dataset.transform, picture,
                               *normalisation(args.model), seed=args.seed)
    val_ids = distributed.gather(val_loader.dataset.table["isic_id"].tolist(), hardware.world_size)
    learner = model
    if args.freeze_backbone:  # only the head learns, on features computed once
        learner, train_loader, val_loader = linear_probe.setup(model, train_loader, val_loader,
                                                               args.batch_size, args.seed,
                                                               hardware.device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # A cosine schedule, stepped every batch: large steps early, ever smaller ones, 0 at the end.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                           T_max=args.epochs * len(train_loader))
    scaler = torch.amp.GradScaler(hardware.device.type, enabled=hardware.precision == "fp16")
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, "
          f"on {hardware}; {len(labels)} training images ({int(labels.sum())} malignant), "
          f"{len(val_ids)} validation images; "
          f"{len(train_loader.sampler) * hardware.world_size} training images per epoch")
    return Run(model, learner, distributed.wrap(learner, hardware.device, hardware.world_size),
               train_loader, val_loader, val_ids,
               loss_for(args.loss, args.class_weights, labels, hardware.device),
               optimizer, scheduler, scaler)


# --- Saving ---------------------------------------------------------------------------------------

def copy_of_weights(model):
    """The model's weights (and batch-norm statistics), copied to the CPU."""
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def save_run(args, out, best, history=(), training_state=None, fold=None, **info):
    """The checkpoint (the best epoch's weights, what evaluate.py needs and, until the run is
    finished, the state to resume from), the log and the curves. Atomic: a crash mid-save keeps
    the previous files."""
    val, (mean, std) = best["val"], normalisation(args.model)
    save_checkpoint(out, best["weights"], model=args.model, img_size=args.img_size, tta=args.tta,
                    mean=mean, std=std, epoch=best["epoch"],
                    val_metrics={key: val[key] for key in ("auc", "loss", "accuracy")},
                    # evaluate.py chooses the decision threshold (or averages models) from these
                    val_predictions={"isic_id": val["isic_id"], "probability": val["probabilities"],
                                     "label": val["labels"]},
                    args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    **info, **({"fold": fold} if fold else {}),
                    **({"training_state": training_state} if training_state else {}))
    if history:
        stem = str(out.with_suffix(""))
        save_atomically(f"{stem}-log.csv",
                        lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
        loss_name = ("class-weighted " if args.class_weights else "") + args.loss
        draw_curves(history, best["epoch"], f"{stem}-curves.png", train_loss=loss_name)


def save_cross_validated(args):
    """--folds K: the models saved fold by fold, joined into one checkpoint."""
    paths = [resume.fold_path(args.out, fold) for fold in range(1, args.folds + 1)]
    best = cross_validation.join(read_checkpoint(path) for path in paths)
    save_run(args, args.out, best, folds=args.folds)
    for path in paths:  # now inside the one checkpoint
        path.unlink()
    print(f"{args.folds} folds, out-of-fold AUC {best['val']['auc']:.3f} on "
          f"{len(best['val']['labels'])} images, saved to {args.out}")


def add_late_fusion(args):
    """The metadata's evidence beside the image model's, fitted on the finished checkpoint."""
    checkpoint = read_checkpoint(args.out)
    picture = args.out.with_name(f"{args.out.stem}-metadata.png")
    if metadata.add_late_fusion(checkpoint, read_labels(args.data), picture):
        save_checkpoint(args.out, checkpoint.pop("state_dict"), **checkpoint)
        print(f"saved to {args.out}")


# --- The command line -----------------------------------------------------------------------------

def parse_arguments():
    """The command line (or, with --resume, the interrupted run's) and the checkpoint to resume
    from."""
    parser = Parser(__doc__)
    add = parser.add_argument
    add("--data", default="data", help="folder with labels.csv from prepare_data.py")
    add("--model", default="baseline",
        choices=("baseline", "resnet", "resnet18", "resnet34", "resnet50", "efficientnet_lite0"),
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
    add("--tta", action=argparse.BooleanOptionalAction, default=None,
        help="score each val and test image as the mean over its 8 flips and quarter turns "
             "(default: on, but for a probe)")
    add("--loss", choices=("cross-entropy", "focal"), default="cross-entropy",
        help="focal: cross-entropy that weighs the images the model already gets right less")
    add("--class-weights", action="store_true",
        help="weight the loss by inverse class frequency (not with --balanced-sampler or "
             "--neg-per-pos, which rebalance already)")
    add("--balanced-sampler", action="store_true", help="draw each class equally often")
    add("--neg-per-pos", type=number(int, 1), default=None, metavar="K",
        help="each epoch, every malignant image and K times as many benign ones, drawn afresh "
             "(for ISIC 2024's 1:1000)")
    add("--freeze-backbone", action="store_true",
        help="with --pretrained: a linear probe, the head trained on each image's features, "
             "computed once (seconds on a CPU; no augmentation)")
    add("--patience", type=number(int, 0), default=5, metavar="N",
        help="stop after N epochs without gain; 0: never, and keep the last "
             "(a few dozen val images pick the best by chance)")
    add("--folds", type=number(int, 1), default=1, metavar="K",
        help="cross-validation: K models, each validated on a K-th of the train and val images, "
             "in one checkpoint that averages them")
    add("--metadata", action=argparse.BooleanOptionalAction, default=True,
        help="weigh each image's age, sex and body site (where labels.csv has them) beside the "
             "image model: a logistic regression on them, its log-odds added to the image's")
    add("--workers", type=number(int, 0), default=None,
        help="processes that load images (default: chapters/hardware.py, worker_count)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    add("--precision", choices=("auto", *PRECISIONS), default="auto",
        help="auto: bf16 on a GPU that supports it, else fp32; fp16 on CUDA only")
    add("--seed", type=int, default=0,
        help="seed of the first weights, the order and the augmentation")
    add("--out", default=None, help="checkpoint path (default: checkpoints/<model>.pt)")
    add("--resume", metavar="CKPT", help="carry on an interrupted run, with its own arguments")
    add("--dry-run", action="store_true", help="one batch of one epoch, to test the set-up")
    novelty.add_options(parser)  # --unlike-share: how many images like the training ones to flag
    args, interrupted = parser.parse_args(), None
    if args.resume:
        try:
            interrupted = read_checkpoint(args.resume)
        except ValueError as error:
            stop(error)
        args = resume.arguments_to_resume(args, interrupted, parser)
    refuse_conflicts(args, parser)
    args.tta = not args.freeze_backbone if args.tta is None else args.tta
    args.lr = args.lr or (3e-4 if args.pretrained else 1e-3)
    args.out = Path(args.out or Path("checkpoints") / f"{args.model}.pt")
    args.epochs = 1 if args.dry_run else args.epochs
    return args, interrupted


def refuse_conflicts(args, parser):
    """Options that cannot go together stop the run (exit 2) with what to do instead."""
    unmet = linear_probe.unmet_needs(args) if args.freeze_backbone else []
    if unmet:  # the probe trains on features computed once from unaugmented images, in one process
        parser.exit(2, f"error: --freeze-backbone needs {'; '.join(unmet)}\n")
    if args.balanced_sampler and args.neg_per_pos:
        parser.exit(2, "error: choose one of --balanced-sampler and --neg-per-pos\n")
    sampler = imbalance.double_correction(args)
    if sampler:  # the loss would weigh the malignant class up again on batches already rebalanced
        parser.exit(2, f"error: --class-weights with {sampler} corrects the class imbalance "
                       "twice; choose one: the sampler (rebalanced batches) or the weights "
                       "(plain batches)\n")


def main():
    args, interrupted = parse_arguments()
    try:
        hardware = Hardware.choose(args.device, args.precision, args.workers)
        args.workers = hardware.workers  # saved with the run's arguments, for --resume
        resume.stop_on_sigterm()
        # One model, or with --folds K one per fold (--resume: from the fold it stopped in).
        for fold, carry_on in resume.folds_to_train(interrupted, args.folds):
            fit(args, fold, carry_on, hardware)
        if args.folds > 1 and hardware.rank == 0:
            save_cross_validated(args)  # the K models as one checkpoint
        if args.metadata and hardware.rank == 0 and not args.dry_run:
            add_late_fusion(args)  # the metadata's evidence beside the image's
        if hardware.rank == 0:  # what its probabilities assume; what its images look like
            calibration.record_prevalence(args)
            novelty.add_statistics(args, hardware.device)
    except (DataError, ValueError) as error:  # bad data (an image gone bad since it was prepared)
        stop(error)
    distributed.finish(hardware.world_size)


if __name__ == "__main__":
    main()

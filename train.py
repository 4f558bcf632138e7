"""Step 4 of 5: train a model on the train split, keep the epoch that does best on the val split.

The loop is the classic one: for each batch, predict, measure the error with cross-entropy, let autograd
compute how every weight should move, and let Adam move them. After each epoch the model is scored on the
validation images, which it never trains on; the epoch with the best validation AUC is kept, and training
stops early once that has not improved for --patience epochs (0: never, and the last epoch is kept). The
test split stays untouched until evaluate.py. With a few hundred labels, --folds K trains K models, each
validated on a different K-th of the train and val images, and keeps them as one (see dataset.py).
Once the image model is trained, and where labels.csv has age, sex or body site, a logistic regression
on them adds its evidence to the image model's (model.py, LateFusion; --no-metadata: not).

Writes a checkpoint (default checkpoints/<model>.pt) after every epoch: the best weights, what evaluate.py
needs to use them (model, image size, normalisation, validation predictions to choose a threshold from,
these arguments, the metadata's fusion) and, until the run ends, the state to resume from. Beside it:
<model>-log.csv, <model>-curves.png (how training went), <model>-augmentations.png (what it saw) and
<model>-metadata.png (what the metadata does to the odds).

Examples:
  python train.py                                          # the baseline CNN on data/
  python train.py --model resnet --epochs 20
  python train.py --model resnet --pretrained --img-size 224 --device cuda
  python train.py --model efficientnet_lite0 --pretrained  # ImageNet weights, offline: the one to use
  python train.py --model efficientnet_lite0 --pretrained --freeze-backbone --lr 3e-3 --epochs 100  # probe
  python train.py --model efficientnet_lite0 --pretrained --seed 1 --out checkpoints/lite0-1.pt  # to average
  python train.py --model efficientnet_lite0 --pretrained --folds 5 --patience 0  # a few hundred labels: 5 folds
  python train.py --dry-run                                # one batch, one epoch: check the plumbing
  python train.py --resume checkpoints/baseline.pt         # carry on after Ctrl-C, a kill or a crash
  python train.py --data data/isic2024 --neg-per-pos 10 --out checkpoints/isic2024.pt  # 1 in 1,000 malignant
  torchrun --nproc_per_node=4 train.py --model resnet --pretrained   # 4 GPUs (or CPU processes), one model
"""
import argparse
import math
import os
import random
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader

from dataset import CustomDataset, EpochSampler, build_loaders, metadata_fields, read_labels, worker_count
from helpers import distributed, resume
from helpers.charts import draw_augmentation_grid, draw_curves, draw_odds
from helpers.files import DataError, Parser, Progress, number, save_atomically, stop
from model import (PRECISIONS, autocast, backbone_features, build_model, choose_precision, fit_late_fusion,
                   head_name, metadata_odds, normalisation, pick_device, read_checkpoint, save_checkpoint)


# --- One epoch of training -----------------------------------------------------------------------------

def train_one_epoch(model, loader, loss_function, optimizer, scheduler, scaler, precision, device, dry_run=False):
    """One pass over this process's training images; returns (mean loss, images seen)."""
    model.train()  # dropout on, batch norm learns its statistics
    total_loss, seen, progress = 0.0, 0, Progress("trained on", len(loader.sampler))
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with autocast(precision, device):
            loss = loss_function(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()  # gradients of the loss with respect to every weight
        scaler.step(optimizer)         # move each weight a little against its gradient
        scaler.update()                # (fp16 only: a smaller scale if gradients overflowed, else larger)
        scheduler.step()               # and adjust the step size for the next batch
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        progress.update(seen)
        if dry_run:
            break
    progress.close()
    return total_loss / seen, seen


def focal_loss(logits, labels, weight=None, gamma=2.0):
    """Cross-entropy with each image's term scaled by (1 - p)^gamma, p the probability of its true class.

    Focal loss (Lin et al., ICCV 2017): images the model already gets right with confidence (p near 1)
    add almost nothing, so training concentrates on the hard and the rare ones. gamma=0 is cross-entropy.
    """
    log_p = logits.float().log_softmax(dim=1).gather(1, labels[:, None]).squeeze(1)
    losses = -(1 - log_p.exp()) ** gamma * log_p
    if weight is None:
        return losses.mean()
    return (weight[labels] * losses).sum() / weight[labels].sum()  # weighted mean, as CrossEntropyLoss does


def loss_for(name, class_weights, train_labels, device):
    """Cross-entropy: -log of the probability given to the true class. With class_weights a malignant image
    counts benign/malignant times as much: ignoring the rare class is no longer a cheap way to a low loss."""
    weight = None
    if class_weights:
        counts = torch.bincount(train_labels, minlength=2).float()
        weight = (counts.sum() / (2 * counts.clamp(min=1))).to(device)
    if name == "focal":
        return lambda logits, labels: focal_loss(logits, labels, weight)
    return nn.CrossEntropyLoss(weight=weight)


# --- Validation: how good is this epoch? -------------------------------------------------------------

def dihedral_views(images):
    """The 8 ways to rotate by quarter turns and mirror a batch: a lesion has no "up" and no "left"."""
    for flipped in (images, images.flip(-1)):
        for quarter_turns in range(4):
            yield flipped.rot90(quarter_turns, dims=(-2, -1))


@torch.inference_mode()  # no gradients: faster, and less memory
def predict(model, loader, device, tta=False):
    """P(malignant) for every image of the loader, in order, and the true labels. With tta (test-time
    augmentation) the mean over its 8 dihedral views: 8 times the work, for a score less tied to the camera."""
    model.eval()  # dropout off, batch norm uses the statistics it learnt
    # On a CPU, 16 images at a time keep more of the activations in the processor's cache: faster per image
    # than 32 or 64 at once (docs/SPEED.md). A GPU wants the whole batch at once.
    on_cpu = torch.device(device).type == "cpu"
    probabilities, labels, progress = [], [], Progress("scored", len(loader.dataset))
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        views = list(dihedral_views(images)) if tta else [images]
        parts = [view.split(16 if on_cpu else len(view)) for view in views]
        scores = [torch.cat([model(part) for part in view]).float().softmax(dim=1)[:, 1] for view in parts]
        probabilities += torch.stack(scores).mean(0).tolist()
        labels += targets.tolist()
        progress.update(len(labels))
    progress.close()
    return probabilities, labels


def roc_curve(labels, probabilities):
    """The ROC curve as (fpr, tpr, thresholds), from (0, 0) to (1, 1); labels 0/1, 1 = malignant.

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
    """Area under the ROC curve, by the trapezoid rule: the chance that a random malignant image scores
    above a random benign one (0.5 is guessing, 1 is perfect). NaN when only one class is present."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    if not fpr:
        return math.nan
    return sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(fpr, fpr[1:], tpr, tpr[1:]))


def validate(model, loader, isic_ids, device, tta, precision, world_size):
    """Score this process's share of the validation images, then all share theirs: summarise()'s figures.
    AUC needs both classes; without, the `score` that chooses the epoch falls back to -loss."""
    with autocast(precision, device):
        probabilities, labels = predict(model, loader, device, tta)
    gathered = distributed.gather(probabilities, world_size), distributed.gather(labels, world_size)
    return {"isic_id": isic_ids, **summarise(*gathered)}


def summarise(probabilities, labels):
    """Validation predictions with their loss (cross-entropy), AUC, accuracy (at 0.5) and score."""
    loss = -sum(math.log(max(p if y else 1 - p, 1e-12)) for p, y in zip(probabilities, labels)) / len(labels)
    auc = roc_auc(labels, probabilities)
    accuracy = sum((p >= 0.5) == y for p, y in zip(probabilities, labels)) / len(labels)
    return {"probabilities": probabilities, "labels": labels, "loss": loss, "auc": auc, "accuracy": accuracy,
            "score": -loss if math.isnan(auc) else auc}


# --- The training run: the loop, epoch by epoch -------------------------------------------------------------

def fit(args, fold, interrupted, precision, rank, world_size, device):
    """Train one model (with --folds, that of fold number `fold`), saved after every epoch."""
    out = resume.fold_path(args.out, fold)
    if fold:
        print(f"fold {fold} of {args.folds}")
    # Same seed, same data -> same initial weights, same batches, same augmentations, same result.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    try:
        model, learner, train_loader, val_loader, val_ids = build_data_and_model(args, fold, precision, rank,
                                                                                 world_size, device)
    except (DataError, ValueError, RuntimeError) as error:
        stop(error)
    loss_function = loss_for(args.loss, args.class_weights, train_loader.sampler.labels, device)
    optimizer = torch.optim.Adam(learner.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    # A cosine schedule, stepped every batch: large steps early, then ever smaller ones to settle, 0 at the end.
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs * len(train_loader))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # does nothing unless fp16
    best, history = {"epoch": 0, "score": -math.inf}, []
    if interrupted:  # --resume: carry on where the interrupted run stopped
        best, history = resume.restore(interrupted, model, optimizer, scheduler, train_loader.generator)
    wrapped = distributed.wrap(learner, device, world_size)  # with torchrun: gradients averaged over processes

    saved_epoch = len(history)
    try:
        for epoch in range(len(history) + 1, args.epochs + 1):
            started = time.time()
            train_loader.sampler.set_epoch(epoch)  # this epoch's images and order: from (seed, epoch)
            train_loss, seen = train_one_epoch(wrapped, train_loader, loss_function, optimizer, scheduler, scaler,
                                               precision, device, args.dry_run)
            train_loss = distributed.agree_after_epoch(model, train_loss, world_size, device)
            val = validate(learner, val_loader, val_ids, device, args.tta, precision, world_size)
            log_epoch(history, epoch, args.epochs, train_loss, val, started, seen * world_size, scheduler)

            weights = copy_of_weights(model)  # safe from further training
            if val["score"] > best["score"] or args.patience == 0:  # with --patience 0 the last epoch is kept
                best = {"epoch": epoch, "score": val["score"], "weights": weights, "val": val}
            finished = epoch == args.epochs or 0 < args.patience <= epoch - best["epoch"]
            if rank == 0:  # the other processes hold the same weights and metrics: one copy is written
                carry_on = None if finished else resume.training_state(weights, optimizer, scheduler,
                                                                       train_loader.generator, history, best)
                save_run(args, out, best, history, carry_on, fold)
                saved_epoch = epoch
            if finished:
                break
    except KeyboardInterrupt:
        resume.say_how_to_resume(saved_epoch, args.out, fold)
    except DataError as error:  # an image that went missing or bad since prepare_data.py checked it
        stop(error)
    if history[-1]["epoch"] < args.epochs:
        print(f"no improvement for {args.patience} epochs: stopped early")
    print(f"best epoch {best['epoch']} (val AUC {best['val']['auc']:.3f}) saved to {out}")


def log_epoch(history, epoch, epochs, train_loss, val, started, images, scheduler):
    """One row of the history (the log's, and the curves'), printed."""
    seconds = time.time() - started
    history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val["loss"],
                    "val_accuracy": val["accuracy"], "val_auc": val["auc"], "seconds": seconds,
                    "images_per_second": images / seconds, "lr": scheduler.get_last_lr()[0]})
    print(f"epoch {epoch:3d}/{epochs}  train loss {train_loss:.4f}  val loss {val['loss']:.4f}  "
          f"val acc {val['accuracy']:.3f}  val AUC {val['auc']:.3f}  {seconds:5.1f} s  "
          f"{images / seconds:5.0f} images/s")


def copy_of_weights(model):
    """The model's weights (and batch-norm statistics), copied to the CPU."""
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def build_data_and_model(args, fold, precision, rank, world_size, device):
    """The model; what learns (the whole model, or with --freeze-backbone only its head); the loaders;
    the validation images' ids. Draws what the model sees beside the checkpoint."""
    mean, std = normalisation(args.model)  # what the pretrained weights expect
    train_loader, val_loader = build_loaders(args.data, args.img_size, args.batch_size, mean, std,
                                             args.balanced_sampler, args.workers, args.seed, args.neg_per_pos,
                                             rank, world_size, fold, args.folds)
    model = build_model(args.model, args.pretrained).to(device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if rank == 0 and fold in (None, 1):  # one picture for all folds
        draw_augmentation_grid(train_loader.dataset, val_loader.dataset.transform,
                               args.out.with_name(f"{args.out.stem}-augmentations.png"), mean, std, seed=args.seed)
    labels = train_loader.dataset.labels
    val_ids = distributed.gather(val_loader.dataset.table["isic_id"].tolist(), world_size)
    learner = model
    if args.freeze_backbone:
        learner, train_loader, val_loader = linear_probe(model, train_loader, val_loader, args, device)
    processes = f" x {world_size} processes" if world_size > 1 else ""
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, on {device}"
          f"{processes}, {precision}; {len(labels)} training images ({sum(labels)} malignant), "
          f"{len(val_ids)} validation images; {len(train_loader.sampler) * world_size} training images per epoch")
    return model, learner, train_loader, val_loader, val_ids


# --- The linear probe (--freeze-backbone) ----------------------------------------------------------------
# A frozen pretrained backbone never changes, so each image's features are computed once and only the new
# head trains on them, epoch after epoch: seconds on a CPU, not minutes; the price is no augmentation.

def linear_probe(model, train_loader, val_loader, args, device):
    """(the head, which alone learns; loaders of the train and val images' features)."""
    plain = CustomDataset(train_loader.dataset.table, val_loader.dataset.transform)  # unaugmented
    train_features = backbone_features(model, plain, args.batch_size, device)
    val_features = backbone_features(model, val_loader.dataset, args.batch_size, device)
    train_loader = DataLoader(train_features, args.batch_size, sampler=EpochSampler(plain.labels, args.seed),
                              generator=train_loader.generator, drop_last=len(train_features) > args.batch_size)
    return getattr(model, head_name(model)), train_loader, DataLoader(val_features, args.batch_size)


# --- Saving -------------------------------------------------------------------------------------------------

def save_run(args, out, best, history=(), training_state=None, fold=None, **info):
    """The checkpoint (the best epoch's weights, what evaluate.py needs and, until the run is finished,
    the state to resume from), the log and the curves. Atomic: a crash mid-save keeps the previous files."""
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
        save_atomically(f"{stem}-log.csv", lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
        loss_name = ("class-weighted " if args.class_weights else "") + args.loss
        draw_curves(history, best["epoch"], f"{stem}-curves.png", train_loss=loss_name)


def save_cross_validated(args):
    """One checkpoint for the models of --folds K: their weights side by side, as model.FoldEnsemble holds
    them, and their out-of-fold predictions, every train and val image scored by the model that never
    trained on it: evaluate.py chooses the threshold on all of them, not on one fold's few."""
    paths = [resume.fold_path(args.out, fold) for fold in range(1, args.folds + 1)]
    try:
        folds = [read_checkpoint(path) for path in paths]
    except ValueError as error:
        stop(error)
    weights = {f"members.{k}.{name}": tensor for k, fold in enumerate(folds)
               for name, tensor in fold["state_dict"].items()}
    # Sorted by image: runs with other seeds (other folds) then list the same images in the same order.
    held_out = pd.concat([pd.DataFrame(fold["val_predictions"]) for fold in folds]).sort_values("isic_id")
    val = {"isic_id": held_out["isic_id"].tolist(),
           **summarise(held_out["probability"].tolist(), held_out["label"].tolist())}
    save_run(args, args.out, {"epoch": [fold["epoch"] for fold in folds], "weights": weights, "val": val},
             folds=args.folds)
    for path in paths:  # now inside the one checkpoint
        path.unlink()
    print(f"{args.folds} folds, out-of-fold AUC {val['auc']:.3f} on {len(held_out)} images, saved to {args.out}")


# --- Late fusion: the metadata joins in, once the image model is trained -----------------------------
# model.py's LateFusion adds the metadata's log-odds, a logistic regression on every labelled image, to the
# image model's. Its bias is set on the held-out images the checkpoint carries predictions for: the val
# split, or with --folds every train and val image, each scored by the model that never trained on it.
# (On its own training images the image model is overconfident: those would set the bias wrong.)

def add_late_fusion(args):
    """Fit the late fusion on the finished checkpoint and save it there; its validation predictions become
    the fused ones, so that evaluate.py chooses its threshold on what it will score."""
    checkpoint = read_checkpoint(args.out)
    fusion, held_out = fit_late_fusion(checkpoint, read_labels(args.data))
    if fusion is None:
        print(f"no metadata in {Path(args.data) / 'labels.csv'}: the image model decides alone")
        return
    save_checkpoint(args.out, checkpoint.pop("state_dict"), **{**checkpoint, "val_predictions": held_out,
                                                               "fusion": fusion})
    draw_odds(metadata_odds(fusion), "what the metadata does to the odds of malignancy",
              args.out.with_name(f"{args.out.stem}-metadata.png"))
    alone = roc_auc(held_out["label"], held_out["image_probability"])
    together = roc_auc(held_out["label"], held_out["probability"])
    print(f"late fusion with {', '.join(metadata_fields(fusion))}: learnt on {fusion['fitted_on']} labelled "
          f"images, set on {fusion['bias_fitted_on']} held-out ones, where the AUC is {alone:.3f} for the image "
          f"alone and {together:.3f} with the metadata; saved to {args.out}")


# --- The command line -----------------------------------------------------------------------------------

def parse_arguments():
    """The command line (or, with --resume, the interrupted run's) and the checkpoint to resume from."""
    parser = Parser(__doc__)
    add = parser.add_argument
    add("--data", default="data", help="folder with labels.csv from prepare_data.py")
    add("--model", default="baseline",
        help="baseline, resnet (= resnet18), resnet34, resnet50 or efficientnet_lite0")
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
    add("--class-weights", action="store_true", help="weight the loss by inverse class frequency")
    add("--balanced-sampler", action="store_true", help="draw each class equally often")
    add("--neg-per-pos", type=number(int, 1), default=None, metavar="K",
        help="each epoch, every malignant image and K times as many benign ones, drawn afresh "
             "(for ISIC 2024's 1:1000)")
    add("--freeze-backbone", action="store_true",
        help="with --pretrained: a linear probe, the head trained on each image's features, computed once "
             "(seconds on a CPU; no augmentation)")
    add("--patience", type=number(int, 0), default=5, metavar="N",
        help="stop after N epochs without gain; 0: never, and keep the last "
             "(a few dozen val images pick the best by chance)")
    add("--folds", type=number(int, 1), default=1, metavar="K",
        help="cross-validation: K models, each validated on a K-th of the train and val images, "
             "in one checkpoint that averages them")
    add("--metadata", action=argparse.BooleanOptionalAction, default=True,
        help="weigh each image's age, sex and body site (where labels.csv has them) beside the image model: "
             "a logistic regression on them, its log-odds added to the image's (default: on)")
    add("--workers", type=number(int, 0), default=None,
        help="processes that load images (default: see dataset.worker_count)")
    add("--device", default="auto", help="auto, cpu, cuda or mps")
    add("--precision", choices=("auto", *PRECISIONS), default="auto",
        help="auto: bf16 on a GPU that supports it, else fp32; fp16 on CUDA only")
    add("--seed", type=int, default=0, help="seed of the first weights, the order and the augmentation")
    add("--out", default=None, help="checkpoint path (default: checkpoints/<model>.pt)")
    add("--resume", metavar="CKPT", help="carry on an interrupted run, with its own arguments")
    add("--dry-run", action="store_true", help="one batch of one epoch, to test the set-up")
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
    if args.freeze_backbone:
        # The probe trains on features computed once from unaugmented images, in one process.
        needs = {"--pretrained (random features are not worth keeping)": args.pretrained,
                 "no --tta (it scores features, not images)": not args.tta,
                 "--class-weights instead of --balanced-sampler or --neg-per-pos":
                     not (args.balanced_sampler or args.neg_per_pos),
                 "one process (it takes seconds; no torchrun)": os.environ.get("WORLD_SIZE", "1") == "1"}
        unmet = [need for need, met in needs.items() if not met]
        if unmet:
            parser.exit(2, f"error: --freeze-backbone needs {'; '.join(unmet)}\n")
    if args.balanced_sampler and args.neg_per_pos:
        parser.exit(2, "error: choose one of --balanced-sampler and --neg-per-pos\n")


def main():
    args, interrupted = parse_arguments()
    rank, world_size, device = distributed.start(pick_device(args.device))
    args.workers = worker_count(args.workers, device)
    try:
        precision = choose_precision(args.precision, device)
    except ValueError as error:
        stop(error)
    resume.stop_on_sigterm()
    # One model, or with --folds K one per fold (--resume carries on in the fold that was interrupted).
    for fold, carry_on in resume.folds_to_train(interrupted, args.folds):
        fit(args, fold, carry_on, precision, rank, world_size, device)
    if args.folds > 1 and rank == 0:
        save_cross_validated(args)  # the K models as one checkpoint
    if args.metadata and rank == 0 and not args.dry_run:
        try:
            add_late_fusion(args)  # the metadata's evidence beside the image's
        except (DataError, ValueError) as error:
            stop(error)
    distributed.finish(world_size)


if __name__ == "__main__":
    main()

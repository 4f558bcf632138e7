"""Step 4 of 5: train a model on the train split, keep the epoch that does best on the val split.

The loop is the classic one: for each batch, predict, measure the error with cross-entropy, let
autograd compute how every weight should move, and let Adam move them. After each epoch the model
is scored on the validation images, which it never trains on; the epoch with the best validation AUC
is kept, and training stops early once that has not improved for --patience epochs. The decision
threshold is chosen on validation too, so the test split stays untouched until evaluate.py.

Writes one checkpoint (default checkpoints/<model>.pt) after every epoch: the best weights, everything
evaluate.py needs to use them (model name, image size, normalisation, threshold, validation metrics,
these arguments) and, until the run ends, the state to resume it from. Beside it: <model>-log.csv and
<model>-curves.png (how training went, epoch by epoch) and <model>-augmentations.png (what it saw).

Examples:
  python train.py                                          # the baseline CNN on data/
  python train.py --model resnet --epochs 20
  python train.py --model resnet --pretrained --img-size 224 --device cuda
  python train.py --model efficientnet_lite0 --pretrained  # ImageNet weights, offline: the one to use
  python train.py --model efficientnet_lite0 --pretrained --freeze-backbone --lr 3e-3 --epochs 100
                                                           # a linear probe: features once, then seconds
  python train.py --model efficientnet_lite0 --pretrained --seed 1 --out checkpoints/lite0-1.pt
                                                           # another seed, to average with evaluate.py
  python train.py --dry-run                                # one batch, one epoch: check the plumbing
  python train.py --resume checkpoints/baseline.pt         # carry on after Ctrl-C, a kill or a crash
  python train.py --data data/isic2024 --neg-per-pos 10    # 1 malignant in 1,000: balanced epochs
  torchrun --nproc_per_node=4 train.py --model resnet --pretrained   # 4 GPUs (or CPU processes), one model
  torchrun --nnodes=2 --nproc_per_node=8 --rdzv-endpoint=HOST:29500 --rdzv-backend=c10d train.py ...
                                                           # the same on 2 machines: run it on each

Several processes (torchrun): each trains on its own share of every epoch's images (--batch-size is per
process, so the effective batch is N times larger), DistributedDataParallel averages their gradients
after every backward pass, so all hold the same weights; each scores its share of the validation
images and all share their predictions, so all agree on the metrics and on when to stop; only the
first (rank 0) prints and writes files.
"""
import argparse
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, TensorDataset

from dataset import (CustomDataset, DataError, EpochSampler, Progress, build_loaders, build_transforms,
                     draw_augmentation_grid, save_atomically, save_image, worker_count)
from evaluate import Chart, choose_threshold, predict, roc_auc, threshold_metrics
from model import build_model, head_name, normalisation, pick_device, read_checkpoint, save_checkpoint


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


def warmup_cosine(step, warmup_steps, total_steps):
    """Learning-rate multiplier: a linear ramp from ~0 to 1, then a cosine from 1 down to 0.

    The ramp lets Adam's running averages settle before it takes full steps, which would otherwise
    knock a pretrained network far from its starting point; the cosine takes large steps early to make
    progress and ever smaller ones to settle into a minimum.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(total_steps - warmup_steps, 1)))


# --- Precision ---------------------------------------------------------------------------------------
# float32 is the safe default. In bfloat16 (8 bits of mantissa instead of 23, float32's range) or float16
# a GPU's tensor cores multiply several times faster and activations take half the memory; autocast
# runs matrix products and convolutions in 16 bits and keeps sums, softmax and the loss in float32,
# where rounding would hurt. float16's narrow range can flush small gradients to zero, so its loss is
# scaled up before backward and the gradients scaled back down (GradScaler); bfloat16 needs no scaling.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_precision(requested, device):
    """'auto' is bf16 on a GPU that has it, else fp32; a CPU without bfloat16 instructions gets a warning."""
    if requested == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
    if requested == "bf16" and device.type == "cpu" and not (torch.cpu._is_avx512_bf16_supported()
                                                              or torch.cpu._is_amx_tile_supported()):
        print("warning: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), so --precision bf16 is "
              "emulated here and far slower than fp32", file=sys.stderr)
    return requested


def autocast(precision, device):
    """The context in which the model runs at this precision (for fp32: one that changes nothing)."""
    return torch.autocast(device.type, PRECISIONS[precision], enabled=precision != "fp32")


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


@torch.inference_mode()
def backbone_features(model, dataset, batch_size, device):
    """Every image of the dataset through the model without its head, once: a dataset of (features, label)."""
    name = head_name(model)
    head = getattr(model, name)
    setattr(model, name, nn.Identity())  # for now the model ends with its features
    model.eval()
    features, labels, progress = [], [], Progress("computed features of", len(dataset))
    try:
        for images, targets in DataLoader(dataset, batch_size):
            features.append(model(images.to(device)).float())
            labels.append(targets)
            progress.update(sum(map(len, labels)))
    finally:
        setattr(model, name, head)
        progress.close()
    return TensorDataset(torch.cat(features), torch.cat(labels).to(device))


def gather(values, world_size):
    """Every process's list of per-image values, joined back into the dataset's order: process k of n
    scored images k, k + n, k + 2n ... (CustomDataset's shard). Every process gets the whole list."""
    if world_size == 1:
        return values
    shares = [None] * world_size
    dist.all_gather_object(shares, values)
    return [shares[i % world_size][i // world_size] for i in range(sum(map(len, shares)))]


def draw_curves(history, best_epoch, path):
    """Loss (train and validation) and validation AUC per epoch, side by side, the best epoch marked."""
    last = max(history[-1]["epoch"], 2)
    epochs = range(0, last + 1, math.ceil(last / 6))
    top = max(max(row["train_loss"], row["val_loss"]) for row in history) * 1.1
    step = 10 ** math.floor(math.log10(top / 4))
    step *= next(m for m in (1, 2, 5, 10) if step * m >= top / 4)  # a round step: 0.1, 0.2, 0.5, 1 ...
    loss = Chart("loss: train (blue), validation (orange)", "epoch", "cross-entropy", last, top, epochs,
                 [round(k * step, 6) for k in range(int(top / step) + 1)])
    auc = Chart(f"validation AUC (best: epoch {best_epoch})", "epoch", "AUC", last, 1, epochs,
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


def snapshot(model):
    """A copy of the weights on the CPU, safe from further training."""
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def random_state(generator):
    """Every random number generator that training draws from, so a resumed run draws the same numbers."""
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_random_state(state, generator):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    generator.set_state(state["loader"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # `kill`, a cluster's time limit, a shutdown: stop as on Ctrl-C


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data", help="folder with labels.csv from prepare_data.py")
    parser.add_argument("--model", default="baseline",
                        help="baseline, resnet (= resnet18), resnet34, resnet50 or efficientnet_lite0")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from ImageNet weights (efficientnet_lite0's work offline)")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate (default 1e-3; 3e-4 with --pretrained, which big steps would spoil)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--img-size", type=int, default=128,
                        help="image side in pixels; 128 keeps a CPU fast, 224 is ResNet's native size")
    parser.add_argument("--backbone-lr-factor", type=float, default=1.0,
                        help="the backbone learns at lr times this, the new head at lr (try 0.1 with --pretrained)")
    parser.add_argument("--warmup-epochs", type=float, default=0, help="ramp the learning rate up over these epochs")
    parser.add_argument("--augment", choices=("light", "strong"), default="light",
                        help="how much training images are varied (see dataset.py)")
    parser.add_argument("--colour-constancy", action="store_true",
                        help="correct every image's colours (shades of grey) before anything else, in training "
                             "and evaluation alike")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="with --pretrained: a linear probe; compute each image's features once, train only "
                             "the head on them (seconds on a CPU; no augmentation)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="score validation (and, later, test) images as the mean over their 8 flips and "
                             "quarter turns (default on, as it measured best; off with --freeze-backbone; "
                             "--no-tta validates 8 times faster)")
    parser.add_argument("--loss", choices=("cross-entropy", "focal"), default="cross-entropy")
    parser.add_argument("--class-weights", action="store_true",
                        help="weight the loss by inverse class frequency, so the rare class counts as much")
    parser.add_argument("--balanced-sampler", action="store_true",
                        help="draw training batches with each class equally often")
    parser.add_argument("--patience", type=int, default=5, help="stop after this many epochs without improvement")
    parser.add_argument("--neg-per-pos", type=int, default=None, metavar="K",
                        help="each epoch, every malignant training image and K times as many benign ones, drawn "
                             "afresh (for heavy imbalance such as ISIC 2024's 1:1000)")
    parser.add_argument("--workers", type=int, default=None,
                        help="DataLoader worker processes (default: on a GPU all CPU cores but one, at most 8; "
                             "on a CPU one per four cores; 0 loads in the training process)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--precision", choices=("auto", *PRECISIONS), default="auto",
                        help="auto: bf16 on a GPU that supports it, else fp32; fp16 on CUDA only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/<model>.pt)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue an interrupted run from its checkpoint, with that run's arguments")
    parser.add_argument("--dry-run", action="store_true", help="one batch of one epoch, to test the set-up")
    args = parser.parse_args()
    resumed = None
    if args.resume:
        # The interrupted run's arguments, except where this machine may differ (device; workers if given).
        try:
            resumed = read_checkpoint(args.resume)
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        if "training_state" not in resumed:
            parser.exit(2, f"error: the run in {args.resume} finished (best epoch {resumed['epoch']}); "
                           "nothing to resume\n")
        workers = resumed["args"]["workers"] if args.workers is None else args.workers
        defaults = vars(parser.parse_args([]))  # for options added since that run
        args = argparse.Namespace(**{**defaults, **resumed["args"], "resume": args.resume, "device": args.device,
                                     "workers": workers})
    # torchrun starts one copy of this script per process and tells each its rank (0 .. N-1) and N.
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if args.freeze_backbone and not (args.pretrained and not args.tta and not args.balanced_sampler
                                     and not args.neg_per_pos and world_size == 1):
        parser.exit(2, "error: --freeze-backbone needs --pretrained (random features are not worth keeping) and "
                       "works on features, not images: no --tta, --class-weights instead of --balanced-sampler "
                       "or --neg-per-pos, and one process (it takes seconds; no torchrun)\n")
    if args.balanced_sampler and args.neg_per_pos:
        parser.exit(2, "error: choose one of --balanced-sampler and --neg-per-pos\n")
    if args.neg_per_pos is not None and args.neg_per_pos < 1:
        parser.exit(2, "error: --neg-per-pos must be at least 1\n")
    if args.tta is None:
        args.tta = not args.freeze_backbone
    if args.lr is None:
        args.lr = 3e-4 if args.pretrained else 1e-3
    args.out = Path(args.out or Path("checkpoints") / f"{args.model}.pt")
    args.epochs = 1 if args.dry_run else args.epochs

    # Same seed, same data -> same initial weights, same batches, same augmentations, same result.
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    args.workers = worker_count(args.workers, device)
    if world_size > 1:
        if device.type == "cuda":  # one GPU per process: torchrun's LOCAL_RANK is its index on this machine
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
            torch.cuda.set_device(device)
        # The processes find each other at torchrun's address; nccl talks GPU to GPU, gloo over TCP.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if rank > 0:
            sys.stdout = open(os.devnull, "w")  # only rank 0 reports; errors still reach stderr
    # Beside the checkpoint: what the model sees, and how training goes (a CSV and a picture per epoch).
    stem = str(args.out.with_suffix(""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mean, std = normalisation(args.model)  # what the pretrained weights expect
    try:
        precision = choose_precision(args.precision, device)
        preprocessing = dict(mean=mean, std=std, colour_constancy=args.colour_constancy, augment=args.augment)
        train_loader, val_loader = build_loaders(args.data, args.img_size, args.batch_size, args.balanced_sampler,
                                                 args.workers, args.seed, args.neg_per_pos, rank, world_size,
                                                 **preprocessing)
        model = build_model(args.model, args.pretrained).to(device)
        if rank == 0:
            draw_augmentation_grid(args.data, args.img_size, f"{stem}-augmentations.png", seed=args.seed,
                                   **preprocessing)
    except (DataError, ValueError, RuntimeError) as error:
        parser.exit(2, f"error: {error}\n")
    train_labels = torch.tensor(train_loader.dataset.labels)
    val_ids = gather(val_loader.dataset.table["isic_id"].tolist(), world_size)
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, on {device}"
          f"{f' x {world_size} processes' if world_size > 1 else ''}, {precision}; {len(train_labels)} training "
          f"images ({int(train_labels.sum())} malignant), {len(val_ids)} validation images; "
          f"{len(train_loader.sampler) * world_size} training images per epoch")

    # What learns: the whole model, or with --freeze-backbone only its head. Then the backbone never
    # changes, so each image's features are computed once and the head trains on those, epoch after epoch.
    trainable = model
    if args.freeze_backbone:
        try:
            plain_train_set = CustomDataset(args.data, "train", build_transforms(args.img_size, False, **preprocessing))
            train_features = backbone_features(model, plain_train_set, args.batch_size, device)
            val_features = backbone_features(model, val_loader.dataset, args.batch_size, device)
        except DataError as error:
            parser.exit(2, f"error: {error}\n")
        train_loader = DataLoader(train_features, args.batch_size, sampler=EpochSampler(train_labels, args.seed),
                                  generator=train_loader.generator, drop_last=len(train_features) > args.batch_size)
        val_loader = DataLoader(val_features, args.batch_size)
        trainable = getattr(model, head_name(model))
    # With several processes, DistributedDataParallel wraps what learns: the same weights everywhere, and
    # after each backward pass every gradient is averaged over the processes (while backward still runs).
    learner = trainable
    if world_size > 1:
        learner = DistributedDataParallel(trainable, device_ids=[device] if device.type == "cuda" else None)

    # Cross-entropy: -log of the probability the model gave the true class. With --class-weights each
    # malignant image counts (benign count / malignant count) times as much, so that ignoring the rare
    # class is no longer a cheap way to a low loss.
    class_weights = None
    if args.class_weights:
        counts = torch.bincount(train_labels, minlength=2).float()
        class_weights = (counts.sum() / (2 * counts.clamp(min=1))).to(device)
    # Focal loss goes further: it also discounts the images the model already gets right.
    if args.loss == "focal":
        def loss_function(logits, labels):
            return focal_loss(logits, labels, class_weights)
    else:
        loss_function = nn.CrossEntropyLoss(weight=class_weights)
    # Two groups of weights: the new head learns at lr; the (pretrained) backbone, whose features are
    # already good, can move more gently, at lr * --backbone-lr-factor.
    head = list(getattr(model, head_name(model)).parameters())
    head_ids = {id(p) for p in head}
    backbone = [p for p in trainable.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "lr": args.lr}]
    groups += [{"params": backbone, "lr": args.lr * args.backbone_lr_factor}] if backbone else []
    optimizer = torch.optim.Adam(groups, weight_decay=args.weight_decay)
    steps = args.epochs * len(train_loader)
    warmup_steps = round(args.warmup_epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, steps))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")  # does nothing unless fp16

    # What the checkpoint keeps of the best epoch so far (the weights and what evaluate.py needs).
    best = {"epoch": 0, "score": -math.inf}
    history, first_epoch = [], 1
    if resumed:
        state = resumed["training_state"]
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_random_state(state["random"], train_loader.generator)
        best = {"epoch": resumed["epoch"], "score": state["best_score"], "weights": resumed["state_dict"],
                "threshold": resumed["threshold"], "val_metrics": resumed["val_metrics"],
                "val_predictions": resumed["val_predictions"]}
        history, first_epoch = state["history"], state["epoch"] + 1
        print(f"resuming {args.resume} after epoch {state['epoch']} of {args.epochs}")

    saved_epoch = first_epoch - 1
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        for epoch in range(first_epoch, args.epochs + 1):
            started = time.time()
            train_loader.sampler.set_epoch(epoch)  # this epoch's images and order: from (seed, epoch)
            train_loss, seen = train_one_epoch(learner, train_loader, loss_function, optimizer, scheduler, scaler,
                                               precision, device, args.dry_run)
            if world_size > 1:  # every process saw as many images; its mean loss is one share of the mean
                seen, shares = seen * world_size, torch.tensor(train_loss, device=device)
                dist.all_reduce(shares)  # gloo and nccl both sum
                train_loss = shares.item() / world_size
                # Batch norm's running statistics are not gradients: each process updated its own in the
                # last step. Rank 0's are the ones saved, so all validate with those.
                for buffer in model.buffers():
                    dist.broadcast(buffer, src=0)
            train_seconds = time.time() - started
            # Validation in the training precision; each process scores its share, then all share theirs.
            with autocast(precision, device):
                probabilities, labels = predict(trainable, val_loader, device, args.tta)
            probabilities, labels = gather(probabilities, world_size), gather(labels, world_size)
            # The training loss again, from the probability each validation image gave its true class.
            val_loss = -sum(math.log(max(p if y else 1 - p, 1e-12)) for p, y in zip(probabilities, labels))
            val_loss /= len(labels)
            val_auc = roc_auc(labels, probabilities)
            val_accuracy = threshold_metrics(labels, probabilities, 0.5)["accuracy"]
            history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                            "val_accuracy": val_accuracy, "val_auc": val_auc, "seconds": time.time() - started,
                            "images_per_second": seen / train_seconds, "lr": scheduler.get_last_lr()[0]})
            print(f"epoch {epoch:3d}/{args.epochs}  train loss {train_loss:.4f}  val loss {val_loss:.4f}  "
                  f"val acc {val_accuracy:.3f}  val AUC {val_auc:.3f}  {history[-1]['seconds']:5.1f} s  "
                  f"{seen / train_seconds:5.0f} images/s")

            # AUC needs both classes in val; a val split with one class falls back to the loss.
            score = -val_loss if math.isnan(val_auc) else val_auc
            weights = snapshot(model)  # this epoch's weights: the best so far, or the state to resume from
            if score > best["score"]:
                threshold = choose_threshold(labels, probabilities)
                best = {"epoch": epoch, "score": score, "weights": weights, "threshold": threshold,
                        "val_metrics": {**threshold_metrics(labels, probabilities, threshold),
                                        "auc": val_auc, "loss": val_loss},
                        # kept so that evaluate.py can choose other operating points, or average models
                        "val_predictions": {"isic_id": val_ids,
                                            "probability": probabilities, "label": labels}}
            finished = epoch == args.epochs or epoch - best["epoch"] >= args.patience
            if rank == 0:  # the other processes hold the same weights and metrics: one copy is written
                # Saved after every epoch: the best weights for evaluate.py and, until the run is finished,
                # everything needed to carry on from here after a crash, Ctrl-C or kill.
                training_state = {} if finished else {"training_state": {
                    "epoch": epoch, "model": weights, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "random": random_state(train_loader.generator),
                    "best_score": best["score"], "history": history}}
                save_checkpoint(args.out, best["weights"], model=args.model, img_size=args.img_size,
                                mean=mean, std=std, colour_constancy=args.colour_constancy, tta=args.tta,
                                threshold=best["threshold"], val_metrics=best["val_metrics"],
                                val_predictions=best["val_predictions"], epoch=best["epoch"],
                                args={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                                **training_state)
                saved_epoch = epoch
                save_atomically(f"{stem}-log.csv", lambda tmp: pd.DataFrame(history).to_csv(tmp, index=False))
                draw_curves(history, best["epoch"], f"{stem}-curves.png")
            if finished:
                if epoch < args.epochs:
                    print(f"no improvement for {args.patience} epochs: stopping early")
                break
    except KeyboardInterrupt:
        saved = (f"epoch {saved_epoch} is saved; continue with: python train.py --resume {args.out}"
                 if saved_epoch else "nothing saved yet")
        print(f"\ninterrupted; {saved}", flush=True)
        raise SystemExit(130) from None
    except DataError as error:  # an image that went missing or bad since prepare_data.py checked it
        parser.exit(2, f"error: {error}\n")
    print(f"best epoch {best['epoch']} (val AUC {best['val_metrics']['auc']:.3f}, threshold {best['threshold']:.3g}) "
          f"saved to {args.out}")
    if world_size > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

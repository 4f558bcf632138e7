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
"""
import argparse
import math
import random
import signal
import time
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch import nn

from torch.utils.data import DataLoader, TensorDataset

from dataset import (CustomDataset, DataError, Progress, build_loaders, build_transforms, draw_augmentation_grid,
                     save_atomically, save_image)
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


def train_one_epoch(model, loader, loss_function, optimizer, scheduler, device, dry_run=False):
    """One pass over the training images; returns (mean loss, images seen)."""
    model.train()  # dropout on, batch norm learns its statistics
    total_loss, seen, progress = 0.0, 0, Progress("trained on", len(loader.dataset))
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = loss_function(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()   # gradients of the loss with respect to every weight
        optimizer.step()  # move each weight a little against its gradient
        scheduler.step()  # and adjust the step size for the next batch
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
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (0: load in this one)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="checkpoint path (default: checkpoints/<model>.pt)")
    parser.add_argument("--resume", default=None, metavar="CKPT",
                        help="continue an interrupted run from its checkpoint, with that run's arguments")
    parser.add_argument("--dry-run", action="store_true", help="one batch of one epoch, to test the set-up")
    args = parser.parse_args()
    resumed = None
    if args.resume:
        # The interrupted run's arguments, except where this machine may differ (device, workers).
        try:
            resumed = read_checkpoint(args.resume)
        except ValueError as error:
            parser.exit(2, f"error: {error}\n")
        if "training_state" not in resumed:
            parser.exit(2, f"error: the run in {args.resume} finished (best epoch {resumed['epoch']}); "
                           "nothing to resume\n")
        args = argparse.Namespace(**{**resumed["args"], "resume": args.resume, "device": args.device,
                                     "workers": args.workers})
    if args.freeze_backbone and not (args.pretrained and not args.tta and not args.balanced_sampler):
        parser.exit(2, "error: --freeze-backbone needs --pretrained (random features are not worth keeping) and "
                       "works on features, not images: no --tta, and --class-weights instead of --balanced-sampler\n")
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
    # Beside the checkpoint: what the model sees, and how training goes (a CSV and a picture per epoch).
    stem = str(args.out.with_suffix(""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    mean, std = normalisation(args.model)  # what the pretrained weights expect
    try:
        preprocessing = dict(mean=mean, std=std, colour_constancy=args.colour_constancy, augment=args.augment)
        train_loader, val_loader = build_loaders(args.data, args.img_size, args.batch_size, args.balanced_sampler,
                                                 args.workers, args.seed, **preprocessing)
        model = build_model(args.model, args.pretrained).to(device)
        draw_augmentation_grid(args.data, args.img_size, f"{stem}-augmentations.png", seed=args.seed,
                               **preprocessing)
    except (DataError, ValueError, RuntimeError) as error:
        parser.exit(2, f"error: {error}\n")
    train_labels = torch.tensor(train_loader.dataset.table["label"].values)
    val_ids = val_loader.dataset.table["isic_id"].tolist()
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, on {device}; "
          f"{len(train_labels)} training images ({int(train_labels.sum())} malignant), "
          f"{len(val_ids)} validation images")

    # What learns: the whole model, or with --freeze-backbone only its head. Then the backbone never
    # changes, so each image's features are computed once and the head trains on those, epoch after epoch.
    learner = model
    if args.freeze_backbone:
        try:
            plain_train_set = CustomDataset(args.data, "train", build_transforms(args.img_size, False, **preprocessing))
            train_features = backbone_features(model, plain_train_set, args.batch_size, device)
            val_features = backbone_features(model, val_loader.dataset, args.batch_size, device)
        except DataError as error:
            parser.exit(2, f"error: {error}\n")
        train_loader = DataLoader(train_features, args.batch_size, shuffle=True, generator=train_loader.generator,
                                  drop_last=len(train_features) > args.batch_size)
        val_loader = DataLoader(val_features, args.batch_size)
        learner = getattr(model, head_name(model))

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
    backbone = [p for p in learner.parameters() if id(p) not in head_ids]
    groups = [{"params": head, "lr": args.lr}]
    groups += [{"params": backbone, "lr": args.lr * args.backbone_lr_factor}] if backbone else []
    optimizer = torch.optim.Adam(groups, weight_decay=args.weight_decay)
    steps = args.epochs * len(train_loader)
    warmup_steps = round(args.warmup_epochs * len(train_loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, warmup_steps, steps))

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
            train_loss, seen = train_one_epoch(learner, train_loader, loss_function, optimizer, scheduler, device,
                                               args.dry_run)
            train_seconds = time.time() - started
            probabilities, labels = predict(learner, val_loader, device, args.tta)
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


if __name__ == "__main__":
    main()

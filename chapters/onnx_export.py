"""The model outside this project: one ONNX file (evaluate.py CHECKPOINT --export FILE.onnx).

ONNX is the exchange format of the field: one file holding the graph of operations and their
weights, which ONNX Runtime runs from Python, C++, C#, Java or JavaScript without PyTorch: a
clinic's app, a web page. The file written here holds the whole prediction as one network (Network):
normalised images in and, for a model trained with metadata, its features (chapters/metadata.py;
NaN = unknown), P(malignant) out, a fold ensemble's models averaged inside. Its metadata_props
(pairs of strings) carry all it takes to feed it: the image size, the normalisation, the resize
rule, the threshold, the metadata's features in order. Before the file is kept, ONNX Runtime runs it
and must agree with PyTorch; the README shows it in use. It scores each image from one view, as
evaluate.py --predict --no-tta does.
Needs the onnx and onnxruntime packages, an extra: python -m pip install -r requirements-onnx.txt

Example:
  python evaluate.py checkpoints/resnet.pt --export resnet.onnx
"""
import json
import math
import warnings

import torch
from torch import nn

from chapters.metadata import LateFusion
from helpers.files import DataError, save_atomically

# The ONNX operator set the graph is written in: 17 is read by every ONNX Runtime since 1.12 (2022).
OPSET = 17

# What the graph's inputs must be, in words: its metadata_props carry this, so that the file is all
# a user needs.
RESIZE_RULE = ("the image in RGB, 8 bits a channel; resized (bilinear, antialiased, as PIL's "
               "BILINEAR resize) so that its shorter side is image_size and its longer side "
               "int(image_size * longer / shorter), the fraction dropped (170 for a 200x150 image "
               "at 128, not 171); then the central image_size x image_size square cropped, its "
               "left edge at round((width - image_size) / 2) and its top at "
               "round((height - image_size) / 2) of the resized image, halves rounded to even "
               "(Python's round); pixels scaled to [0, 1], then each channel minus mean, divided "
               "by std. Input 'image': float32, shape (images, 3, image_size, image_size)")
METADATA_RULE = ("input 'metadata': float32, shape (images, features), the features in the order "
                 "of metadata_features, NaN where unknown. A plain name (age in years, a "
                 "measurement in its CSV's unit) is the number; 'column: word' is 1 when the "
                 "image's column is that word (a site ending in 'torso' is also 'torso'), 0 when "
                 "it is another word of the list, NaN when unknown or another word; 'column vs "
                 "patient' is the value minus the mean of that column over the same patient's "
                 "images being scored, divided by their standard deviation")


def add_options(instead):
    """evaluate.py --export, in `instead`: the group of what is done instead of a report."""
    instead.add_argument("--export", default=None, metavar="FILE.onnx",
                         help="write the model as one ONNX graph, for ONNX Runtime "
                              "(chapters/onnx_export.py)")


class Network(nn.Module):
    """The whole prediction as one network: normalised images in (and, for a model trained with
    metadata, its features, NaN = missing), P(malignant) of each image out."""

    def __init__(self, model, fusion=None):
        super().__init__()
        self.model, self.fusion = model, LateFusion(fusion) if fusion else None

    def forward(self, images, features=None):
        probability = self.model(images).float().softmax(dim=1)[:, 1]
        return probability if self.fusion is None else self.fusion(probability, features)


def example_images(transform, size, generator=None, count=5):
    """Random images as the model sees them (through its evaluation transform): to trace and check
    an export on."""
    pixels = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return torch.stack([transform(image) for image in pixels])


def export(models, threshold, path):
    """FILE.onnx: the checkpoint's network, its metadata fusion and how to feed them
    (evaluate.py's Models)."""
    if len(models.members) > 1:
        raise ValueError("--export writes one checkpoint (a --folds run's models are one file "
                         "already); give one")
    model, info = models.members[0]
    fusion, size, folds = info.get("fusion"), info["img_size"], info.get("folds", 1)
    # Example inputs, to trace the network and to check ONNX Runtime against PyTorch: random pixels,
    # and metadata around its training values with some of it missing.
    generator = torch.Generator().manual_seed(0)
    inputs = {"image": example_images(models.transform(), size, generator)}
    ensemble_note = f", the mean of {folds} cross-validation models" if folds > 1 else ""
    props = {"model": info["model"] + ensemble_note,
             "image_size": str(size), "mean": json.dumps(list(info["mean"])),
             "std": json.dumps(list(info["std"])),
             "resize": RESIZE_RULE, "threshold": f"{threshold:.6g}",
             "output": "'probability': P(malignant) of each image, from one view "
                       "(evaluate.py --predict --no-tta); malignant when at least threshold, "
                       "chosen on the validation images"}
    if fusion:
        features = torch.tensor(fusion["centre"]) + torch.randn(len(inputs["image"]),
                                                                len(fusion["centre"]),
                                                                generator=generator)
        features[0, ::2], features[1] = math.nan, math.nan
        inputs["metadata"] = features
        props.update(metadata_features=json.dumps(fusion["features"]), metadata=METADATA_RULE)
    export_onnx(Network(model.cpu(), fusion), inputs, props, path)
    print(f"wrote {path}: {props['model']}, {size} px"
          + (f", with {len(fusion['features'])} metadata features" if fusion else "")
          + "; ONNX Runtime checked against PyTorch")


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


def export_onnx(network, inputs, props, path, tolerance=1e-4):
    """Write network (inputs: name -> example tensor, the batch first) to path as one ONNX graph
    whose output is named "probability", with props (str -> str) as its metadata_props. Before the
    file is kept, ONNX Runtime runs it on the example inputs and must give the network's outputs to
    `tolerance`, or ValueError; a batch of any size is accepted."""
    onnx, _ = import_onnx()
    network.eval()

    def write(tmp):
        # PyTorch 2.9 made the torch.export-based exporter the default; it needs the onnxscript
        # package. The TorchScript-based one, still part of torch, writes the same graph from a
        # trace of one forward pass: what Python computes from the input's shape (EfficientNet's
        # "same" padding) becomes a constant, right for a graph whose image size is fixed, as here.
        # Its warnings say as much.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
            dynamic_batch = {name: {0: "images"} for name in [*inputs, "probability"]}
            torch.onnx.export(network, tuple(inputs.values()), tmp, dynamo=False,
                              opset_version=OPSET, input_names=list(inputs),
                              output_names=["probability"], dynamic_axes=dynamic_batch)
        graph = onnx.load(tmp)
        for key, value in props.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(graph, tmp)
        check(tmp, network, inputs, tolerance)

    save_atomically(path, write)  # a failed check keeps nothing


def check(path, network, inputs, tolerance):
    """ONNX Runtime's outputs for the inputs must be the network's to `tolerance`, or ValueError."""
    _, onnxruntime = import_onnx()
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = network(*inputs.values()).float()
    feed = {name: tensor.numpy() for name, tensor in inputs.items()}
    got = torch.from_numpy(session.run(None, feed)[0])
    gap = (got - expected).abs().max().item()
    if not gap <= tolerance:  # also refuses NaN
        raise ValueError(f"the ONNX graph's probabilities differ from PyTorch's by up to {gap:.2g} "
                         f"(more than {tolerance:g}) on {len(expected)} test inputs; not written. "
                         "Please report this with the checkpoint's model name and torch "
                         f"{torch.__version__}")


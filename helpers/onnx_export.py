"""Writing a network as an ONNX file, and checking it before it is kept (evaluate.py --export).

ONNX is the exchange format of the field: one file holding the graph of operations and their weights,
which ONNX Runtime runs from Python, C++, C#, Java or JavaScript without PyTorch. Its metadata_props (pairs
of strings) carry what a user needs to feed the graph. Needs the onnx and onnxruntime packages, an extra:
  python -m pip install -r requirements-onnx.txt
"""
import warnings

import torch

from helpers.files import DataError, save_atomically

# The ONNX operator set the graph is written in: 17 is read by every ONNX Runtime since 1.12 (2022).
OPSET = 17


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
    """Write network (inputs: name -> example tensor, the batch first) to path as one ONNX graph whose
    output is named "probability", with props (str -> str) as its metadata_props. Before the file is kept,
    ONNX Runtime runs it on the example inputs and must give the network's outputs to `tolerance`, or
    ValueError; a batch of any size is accepted."""
    onnx, _ = import_onnx()
    network.eval()

    def write(tmp):
        # PyTorch 2.9 made the torch.export-based exporter the default; it needs the onnxscript package. The
        # TorchScript-based one, still part of torch, writes the same graph from a trace of one forward pass:
        # what Python computes from the input's shape (EfficientNet's "same" padding) becomes a constant, right
        # for a graph whose image size is fixed, as here. Its warnings say as much.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (DeprecationWarning, torch.jit.TracerWarning))
            torch.onnx.export(network, tuple(inputs.values()), tmp, dynamo=False, opset_version=OPSET,
                              input_names=list(inputs), output_names=["probability"],
                              dynamic_axes={name: {0: "images"} for name in [*inputs, "probability"]})
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
    got = torch.from_numpy(session.run(None, {name: tensor.numpy() for name, tensor in inputs.items()})[0])
    gap = (got - expected).abs().max().item()
    if not gap <= tolerance:  # also refuses NaN
        raise ValueError(f"the ONNX graph's probabilities differ from PyTorch's by up to {gap:.2g} (more than "
                         f"{tolerance:g}) on {len(expected)} test inputs; not written. Please report this with "
                         f"the checkpoint's model name and torch {torch.__version__}")


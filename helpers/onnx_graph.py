"""An ONNX graph written as function calls (chapters/onnx_export.py); a first reading can skip it.

ONNX's own helper builds a graph from node records, each naming its inputs and outputs as strings.
Builder lets a graph read as arithmetic instead: each call adds one node and returns the name of
its output, to pass to the next call; a Python number or array becomes a constant.
"""
import numpy as np


class Builder:
    """The nodes and constants of one graph, its names prefixed so that it can be joined to
    another graph (onnx.compose) without clashes."""

    def __init__(self, prefix):
        import onnx

        self.onnx, self.prefix, self.nodes, self.constants = onnx, prefix, [], []

    def name(self, kind):
        return f"{self.prefix}{kind}_{len(self.nodes) + len(self.constants)}"

    def constant(self, value, dtype):
        """A constant (a number or an array) of this numpy dtype."""
        name = self.name("constant")
        self.constants.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def __call__(self, kind, *inputs, **attributes):
        """One node of this operator (ONNX's name: "Add", "Gather"...) on these inputs: names, or
        Python integers and lists of them (axes, shapes), made int64 constants; the name of its
        output."""
        inputs = [value if isinstance(value, str) else self.constant(value, np.int64)
                  for value in inputs]
        output = self.name(kind)
        self.nodes.append(self.onnx.helper.make_node(kind, inputs, [output], **attributes))
        return output

    def cast(self, value, kind):
        """The value as this element type, as onnx.TensorProto names it ("INT64", "DOUBLE"...)."""
        return self("Cast", value, to=getattr(self.onnx.TensorProto, kind))

    def model(self, inputs, outputs, opset):
        """The graph as an ONNX model: `inputs` as (name, element type, shape), the type as
        onnx.TensorProto names it ("UINT8"); `outputs` maps each output's name to (the node
        output it is, element type, shape)."""
        helper, proto = self.onnx.helper, self.onnx.TensorProto
        renamed = [helper.make_node("Identity", [node], [name])
                   for name, (node, _, _) in outputs.items()]
        graph = helper.make_graph(
            self.nodes + renamed, self.prefix.strip("/"),
            [helper.make_tensor_value_info(name, getattr(proto, kind), shape)
             for name, kind, shape in inputs],
            [helper.make_tensor_value_info(name, getattr(proto, kind), shape)
             for name, (_, kind, shape) in outputs.items()],
            initializer=self.constants)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

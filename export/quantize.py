"""int8 weights for the scorer's f on the CPU (`apron export --int8`).

At 41,000 items nearly all of a scorer run is f's last layer (600 x N, about 98 MB in fp32), read
whole on every run: on a CPU the scorer is bound by that stream, not by arithmetic. ONNX Runtime's
dynamic quantization stores each of f's weight matrices as int8 (7-bit range, see `reduce_range`
below) with one scale per output channel (a quarter of the bytes) and quantizes the layer's input
(the shares, or u where f has no hidden layer to fold u into; then tanh's output) to uint8 per run, each row with its own scale
(`quantize_rows_apart`: a request's scores never depend on the requests batched with it), so each
layer is one integer matrix product (MatMulInteger) and a rescale.

Only f is quantized: the shares, the edit penalty, the log-softmax, the exclusions and the top-k
stay fp32, and so do the profile graph and the item encoder. What it costs in ranking is measured,
not assumed: the export's parity check holds the int8 scores to `onnx_export.TOLERANCES` of
the fp32 model's, and `python -m benchmarks.int8_quality` compares Recall@20/50 and NDCG@100 with
the fp32 graph on the same test users by a paired interval (export/README.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper

F_NODES = "/f/"  # the traced name prefix of f's layers (ServedScorer.f)
WEIGHT_OPS = ("Gemm", "MatMul")
QUANTIZED_OP = "MatMulInteger"


class QuantizationError(RuntimeError):
    """ONNX Runtime's quantizer did not turn exactly f's layers into integer products."""


def f_layers(graph: onnx.GraphProto) -> list[str]:
    """Names of f's weight products in the scorer's top-level graph (one per Linear layer)."""
    return [node.name for node in graph.node if node.op_type in WEIGHT_OPS and node.name.startswith(F_NODES)]


def quantize_scorer(scorer_onnx: bytes, reads_shares: bool = True) -> bytes:
    """The scorer graph with f's weights int8 (per output channel) and its layer inputs quantized
    to uint8 at run time; raises QuantizationError unless every one of f's layers, and nothing
    else, became an integer product. `reads_shares`: f's first layer reads the (non-negative)
    shares, u folded into it (`ServedScorer.folded`); otherwise it reads u, of either sign."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load_from_string(scorer_onnx)
    layers = f_layers(model.graph)
    if not layers:
        raise QuantizationError("the scorer graph has no f layers to quantize (no Gemm/MatMul named /f/...)")
    others = [node.name for node in model.graph.node if node.op_type in WEIGHT_OPS and node.name not in layers]
    with quantizer_advice_muted(), tempfile.TemporaryDirectory(prefix="apron-int8-") as work:
        source, target = Path(work) / "fp32.onnx", Path(work) / "int8.onnx"
        source.write_bytes(scorer_onnx)
        quantize_dynamic(
            source,
            target,
            op_types_to_quantize=list(WEIGHT_OPS),
            nodes_to_exclude=others,
            per_channel=True,
            weight_type=QuantType.QInt8,
            # 7-bit weights: ONNX Runtime's quantization guide advises reduce_range on x86 CPUs
            # without VNNI, where uint8 x int8 products are summed in pairs into int16, which
            # full-range weights can overflow (255 * 127 * 2 > 32767) silently. Not measured here
            # (this machine has VNNI), but the graph may be served on another machine than the one
            # that exported and checked it. Here it runs at the same speed (benchmarks.int8_quality's
            # scorer rows, export/README.md) with a largest parity error of 0.115 against 0.102.
            reduce_range=True,
        )
        quantized = onnx.load(target)
    products = [node.name for node in all_nodes(quantized.graph) if node.op_type == QUANTIZED_OP]
    if len(products) != len(layers) or not all(name.startswith(F_NODES) for name in products):
        raise QuantizationError(
            f"ONNX Runtime's quantizer made integer products {products} of f's layers {layers}: "
            "this onnxruntime version quantizes differently; export without --int8"
        )
    quantize_rows_apart(quantized.graph, reads_shares)
    sort_nodes(quantized.graph)
    onnx.checker.check_model(quantized)
    return quantized.SerializeToString()


# Per-row input quantization (`quantize_rows_apart`): a non-negative input (the shares, a ReLU's
# output) as uint8 from 0 (zero point 0, 8 bits of its row's maximum), any other (tanh's) around
# 128 (7 bits of its row's largest magnitude either way). ONNX Runtime's MatMulInteger takes only
# one zero point for all rows, so the zero point is fixed and only the scale follows the row.
UNSIGNED, SIGNED = (0, 255.0), (128, 127.0)  # (zero point, levels above it)
NON_NEGATIVE_OPS = ("Relu",)  # producers whose output is never below 0 (f's first input: the shares)
SMALLEST_SCALE = 1e-30  # an all-zero row (an empty profile): any scale gives 0, this one no NaN


def quantize_rows_apart(graph: onnx.GraphProto, reads_shares: bool = True) -> None:
    """Each of the quantizer's `DynamicQuantizeLinear` nodes (one scale and zero point for the
    whole (B, D) input, the batch's rows together, so a row's scores depended on its batch
    neighbours) becomes a per-row quantization: its row's own scale, a fixed zero point. The
    products, their rescale (now (B, 1) × (N,)) and the weights are unchanged. In place.
    `reads_shares`: f's first layer reads the shares (see `quantize_scorer`)."""
    producers = {output: node for node in graph.node for output in node.output}
    products = {node.input[0]: node for node in graph.node if node.op_type == QUANTIZED_OP}  # quantized input -> its product
    for node in list(graph.node):
        if node.op_type != "DynamicQuantizeLinear":
            continue
        (x,), (quantized, scale, zero_point) = node.input, node.output
        producer = producers.get(x)
        # f's first layer (traced as /f/f.0/) reads the shares when u is folded into it, else u (signed:
        # from 0 its negative half would be clipped); a later one reads its activation's output
        first = products[quantized].name.startswith(f"{F_NODES}f.0/")
        non_negative = (first and reads_shares) or (producer is not None and producer.op_type in NON_NEGATIVE_OPS)
        zero, levels = UNSIGNED if non_negative else SIGNED
        graph.node.remove(node)
        graph.node.extend(_row_quantization(x, quantized, scale, f"{x}_rows", zero, levels))
        graph.initializer.append(onnx.numpy_helper.from_array(np.array(zero, np.uint8), zero_point))
        _rescale_rows_last(graph, scale)


def _rescale_rows_last(graph: onnx.GraphProto, scale: str) -> None:
    """The quantizer rescales a product by Mul(product, Mul(input scale, weight scales)); ONNX
    Runtime's optimizer fuses that into one MatMulIntegerToFloat, which takes the input scale to be
    one number and, given a (B, 1) one, scores wrong (the export's parity check fails). So the
    weight scales rescale the product first (fused as before) and the row's scale after it."""
    (combine,) = [node for node in graph.node if node.op_type == "Mul" and scale in node.input]  # Mul(scale, weight scales)
    (weights,) = [name for name in combine.input if name != scale]
    (rescale,) = [node for node in graph.node if combine.output[0] in node.input]  # Mul(product, combined)
    combine.op_type, combine.input[:] = "Identity", [weights]
    per_column = f"{rescale.output[0]}_per_column"
    rescaled = rescale.output[0]
    rescale.output[0] = per_column
    graph.node.append(onnx.helper.make_node("Mul", [per_column, scale], [rescaled], name=f"{rescale.name}_rows"))


def _row_quantization(x: str, quantized: str, scale: str, prefix: str, zero: int, levels: float) -> list[onnx.NodeProto]:
    """Nodes: `scale` (B, 1) = the row's largest magnitude / `levels` (at least SMALLEST_SCALE),
    `quantized` (B, D) uint8 = round(x / scale) + `zero`, saturated to [0, 255]."""
    constant = lambda name, value: onnx.helper.make_node(  # noqa: E731
        "Constant", [], [f"{prefix}_{name}"], value=onnx.numpy_helper.from_array(np.array(value, np.float32))
    )
    make = onnx.helper.make_node
    return [
        make("Abs", [x], [f"{prefix}_abs"]),
        make("ReduceMax", [f"{prefix}_abs"], [f"{prefix}_max"], axes=[1], keepdims=1),
        constant("levels", levels), constant("smallest", SMALLEST_SCALE), constant("zero", float(zero)),
        constant("low", 0.0), constant("high", 255.0),
        make("Div", [f"{prefix}_max", f"{prefix}_levels"], [f"{prefix}_raw_scale"]),
        make("Max", [f"{prefix}_raw_scale", f"{prefix}_smallest"], [scale]),
        make("Div", [x, scale], [f"{prefix}_scaled"]),
        make("Round", [f"{prefix}_scaled"], [f"{prefix}_rounded"]),  # half to even, as DynamicQuantizeLinear
        make("Add", [f"{prefix}_rounded", f"{prefix}_zero"], [f"{prefix}_shifted"]),
        make("Clip", [f"{prefix}_shifted", f"{prefix}_low", f"{prefix}_high"], [f"{prefix}_saturated"]),
        make("Cast", [f"{prefix}_saturated"], [quantized], to=onnx.TensorProto.UINT8),
    ]


class _QuantizerAdvice(logging.Filter):
    """Drops what ONNX Runtime's quantizer itself logs below ERROR (its advice to pre-process the
    model first, which f's plain Linear layers do not need). It logs with `logging.warning`, on the
    root logger, and a filter there sees only records logged on the root logger itself: of those,
    this one drops the ones logged from the quantizer's own files, whatever thread logs the rest."""

    def __init__(self, package: Path):
        super().__init__()
        self.package = f"{package}{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.pathname.startswith(self.package)


@contextlib.contextmanager
def quantizer_advice_muted() -> Iterator[None]:
    """While it lasts, the root logger drops the quantizer's own notes (`_QuantizerAdvice`); its
    level and every other record are left as they are."""
    import onnxruntime.quantization

    advice = _QuantizerAdvice(Path(onnxruntime.quantization.__file__).parent)
    root = logging.getLogger()
    root.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)


def all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of `graph`, its subgraphs' (an If's branches) included."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from all_nodes(attribute.g)


def _needs(node: onnx.NodeProto) -> set[str]:
    """The values `node` reads: its inputs and what its subgraphs (an If's branches) read from the
    enclosing graph (a superset: names a subgraph makes itself are no value of the outer graph)."""
    names = {name for name in node.input if name}
    for attribute in node.attribute:
        if attribute.type == onnx.AttributeProto.GRAPH:
            names |= {name for inner in all_nodes(attribute.g) for name in inner.input if name}
    return names


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order `graph`'s nodes so that each comes after the producers of what it reads, its subgraphs'
    outer-scope reads included: the quantizer appends the layers it rewrites at the end, after the
    edit penalty's If whose branch reads f's output, which ONNX's checker refuses."""
    produced_by = {output: index for index, node in enumerate(graph.node) for output in node.output if output}
    waits_on = [{produced_by[name] for name in _needs(node) if name in produced_by} for node in graph.node]
    order: list[int] = []
    placed: set[int] = set()
    while len(order) < len(graph.node):
        ready = [i for i in range(len(graph.node)) if i not in placed and waits_on[i] <= placed]
        if not ready:
            raise QuantizationError("the quantized scorer graph has a cycle")
        order += ready
        placed |= set(ready)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)

"""`views.onnx`: one decoded image in, every view out (crops, resizes, flips, normalisation).

The graph runs a `contracts.view_plan.ViewPlan` (computed by the gateway per image size and
cached): two gathers with Pillow's fixed-point coefficients, each followed by Pillow's rounding
shift and uint8 clip, then the mirror images, the view order, the contract's scale/mean/std and
NCHW. Integer arithmetic is int32, as in Pillow, so the views equal `make_views`' bit for bit;
`verify_views_graph` checks that on every export.

    image           uint8 [H, W, 3]        the decoded RGB image
    vertical_first  bool  []               which pass runs first (Pillow's rule, in the plan)
    first_index     int64 [J, O1, K1]      first_weight  int32 [J, O1, K1, 1]
    second_index    int64 [V, O2, K2]      second_weight int32 [V, O2, K2, 1]
    order           int64 [N]              rows of [views; mirrored views]
    -> views        float32 [N, 3, Ho, Wo]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from contracts.view_plan import PRECISION_BITS, view_plan
from contracts.vision import PreprocessContract, make_views
from export.verify import VerificationError

OPSET = 17
OUTPUT = "views"
INT64_MIN = np.iinfo(np.int64).min


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def _pass_nodes(src: str, index: str, weight: str, out: str) -> list[onnx.NodeProto]:
    """out = clip((Σ_k src[index[..., k]] · weight[..., k] + 2^21) >> 22, 0, 255), as Pillow's 8bpc
    passes; the sum over taps is one batched int32 MatMul ([1, K] @ [K, block] per output)."""
    p = out + "/"
    return [
        helper.make_node("Gather", [src, index], [p + "taps"], axis=0),  # [..., K, block]
        helper.make_node("MatMul", [weight, p + "taps"], [p + "products"]),  # [..., 1, block]
        helper.make_node("Squeeze", [p + "products", "axis_m2"], [p + "sum"]),
        helper.make_node("Add", [p + "sum", "half"], [p + "rounded"]),
        helper.make_node("Div", [p + "rounded", "one"], [p + "shifted"]),  # trunc = floor where it matters (>= 0)
        helper.make_node("Max", [p + "shifted", "zero"], [p + "low"]),
        helper.make_node("Min", [p + "low", "max255"], [out]),
    ]


def _branch(name: str, node: onnx.NodeProto) -> onnx.GraphProto:
    return helper.make_graph([node], name, [], [helper.make_tensor_value_info(node.output[0], TensorProto.INT32, None)])


def _transpose(src: str, out: str, perm: list[int]) -> onnx.NodeProto:
    return helper.make_node("Transpose", [src], [out], perm=perm)


def build_views_graph(contract: PreprocessContract) -> onnx.ModelProto:
    """Layouts are chosen so that every gather copies whole rows and every transpose moves a single
    axis (ONNX Runtime's fast paths); channels stay planar until the end."""
    c = 3
    mean = np.asarray(contract.mean, np.float32).reshape(1, c, 1, 1)
    std = np.asarray(contract.std, np.float32).reshape(1, c, 1, 1)
    nodes = [
        _const("axis_m2", np.array([-2], np.int64)),
        _const("half", np.array(1 << (PRECISION_BITS - 1), np.int32)),
        _const("one", np.array(1 << PRECISION_BITS, np.int32)),
        _const("zero", np.array(0, np.int32)),
        _const("max255", np.array(255, np.int32)),
        _const("lines_shape", np.array([0, -1], np.int64)),
        _const("planar", np.array([0, 0, c, -1], np.int64)),
        _const("crops_shape", np.array([0, 0, -1, c], np.int64)),
        _const("minus1", np.array([-1], np.int64)),
        _const("three", np.array([c], np.int64)),
        _const("one_i", np.array([1], np.int64)),
        _const("two_i", np.array([2], np.int64)),
        _const("scale", np.array(1 / 255, np.float32)),
        _const("mean", mean),
        _const("std", std),
        _const("flip_starts", np.array([-1], np.int64)),
        _const("flip_ends", np.array([INT64_MIN], np.int64)),
        _const("flip_axes", np.array([3], np.int64)),
        _const("flip_steps", np.array([-1], np.int64)),
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.INT32),
        # Lines along the first pass's axis, channels planar: columns [W, 3, H] or rows [H, 3, W].
        helper.make_node(
            "If",
            ["vertical_first"],
            ["lines3"],
            then_branch=_branch("rows", _transpose("pixels", "rows", [0, 2, 1])),
            else_branch=_branch("columns", _transpose("pixels", "columns", [1, 2, 0])),
        ),
        helper.make_node("Reshape", ["lines3", "lines_shape"], ["lines"]),  # [B, 3·A]
        *_pass_nodes("lines", "first_index", "first_weight", "first"),  # [J, O1, 3·A]
        helper.make_node("Reshape", ["first", "planar"], ["first4"]),  # [J, O1, 3, A]
        _transpose("first4", "first_t", [0, 3, 1, 2]),  # [J, A, O1, 3]
        helper.make_node("Shape", ["first_index"], ["first_shape"]),
        helper.make_node("Slice", ["first_shape", "one_i", "two_i"], ["o1"]),  # O1 (index: [J, O1, K1])
        helper.make_node("Mul", ["o1", "three"], ["o1x3"]),
        helper.make_node("Concat", ["minus1", "o1x3"], ["stacked_shape"], axis=0),
        helper.make_node("Reshape", ["first_t", "stacked_shape"], ["stacked"]),  # [J·A, O1·3]
        *_pass_nodes("stacked", "second_index", "second_weight", "second"),  # [V, O2, O1·3]
        helper.make_node("Reshape", ["second", "crops_shape"], ["second4"]),  # [V, O2, O1, 3]
        # To NCHW [V, 3, Ho, Wo]: O2 is Ho horizontally first; vertically first O2 is Wo.
        helper.make_node(
            "If",
            ["vertical_first"],
            ["crops"],
            then_branch=_branch("from_wh", _transpose("second4", "wh", [0, 3, 2, 1])),
            else_branch=_branch("from_hw", _transpose("second4", "hw", [0, 3, 1, 2])),
        ),
        helper.make_node("Slice", ["crops", "flip_starts", "flip_ends", "flip_axes", "flip_steps"], ["mirrored"]),
        helper.make_node("Concat", ["crops", "mirrored"], ["both"], axis=0),
        helper.make_node("Gather", ["both", "order"], ["ordered"], axis=0),  # [N, 3, Ho, Wo]
        helper.make_node("Cast", ["ordered"], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["as_float", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "std"], [OUTPUT]),
    ]
    ho, wo = contract.input_size
    inputs = [
        helper.make_tensor_value_info("image", TensorProto.UINT8, ["height", "width", c]),
        helper.make_tensor_value_info("vertical_first", TensorProto.BOOL, []),
        helper.make_tensor_value_info("first_index", TensorProto.INT64, ["windows", "first_out", "first_taps"]),
        helper.make_tensor_value_info("first_weight", TensorProto.INT32, ["windows", "first_out", 1, "first_taps"]),
        helper.make_tensor_value_info("second_index", TensorProto.INT64, ["crops", "second_out", "second_taps"]),
        helper.make_tensor_value_info("second_weight", TensorProto.INT32, ["crops", "second_out", 1, "second_taps"]),
        helper.make_tensor_value_info("order", TensorProto.INT64, ["views"]),
    ]
    outputs = [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["views", c, ho, wo])]
    graph = helper.make_graph(nodes, "kiln_views", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="kiln")
    onnx.checker.check_model(model, full_check=True)
    return model


def export_views_graph(contract: PreprocessContract, out_file: Path) -> Path:
    out_file.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(build_views_graph(contract), str(out_file))
    return out_file


# (width, height) of the verification images: the demo scenes' size, tiny, upsampled, tall ones
# (Pillow's vertical-first order), wide ones, and one large enough for many taps.
VERIFY_SIZES = ((128, 128), (1, 1), (20, 13), (33, 300), (300, 33), (96, 160), (640, 480))
VERIFY_OPTIONS = (
    ("single", 3, 0.25, False),
    ("multi", 3, 0.25, True),
    ("multi", 2, 0.0, False),
    ("multi", 4, 0.5, True),
)


def verify_views_graph(onnx_file: Path, contract: PreprocessContract, seed: int = 0) -> dict:
    """max |Δ| between the graph's views and make_views' (Pillow) over sizes and view options;
    VerificationError unless they are identical."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_file), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    worst, checked, vertical_first = 0.0, 0, 0
    for w, h in VERIFY_SIZES:
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        for mode, grid, overlap, flip in VERIFY_OPTIONS:
            names, want = make_views(image, contract, mode, grid, overlap, flip)
            plan = view_plan(w, h, contract, mode, grid, overlap, flip)
            (got,) = sess.run([OUTPUT], plan.feeds(pixels))
            if list(plan.names) != names or got.shape != want.shape:
                raise VerificationError(f"views graph: {w}x{h} {mode}: views {plan.names} {got.shape}, want {names}")
            worst = max(worst, float(np.max(np.abs(got - want))))
            checked += len(names)
            vertical_first += plan.vertical_first
    report = {"max_abs": worst, "views_checked": checked, "vertical_first_plans": vertical_first, "passed": worst == 0}
    if worst != 0:
        raise VerificationError(f"{onnx_file.name}: in-graph views differ from Pillow's by up to {worst:.3g}")
    return report

"""model.onnx: the one graph a model directory ships — read characters, then draw and feed back more.

One call reads `ids` [B, T] (teacher-forced: priming on a seed, or scoring a text, with the
distribution after every character returned as `read_logits` [T, B, V]), then draws K characters,
feeding each back. One call per character would cost ~16 µs of onnxruntime overhead, more than the
arithmetic of one LSTM step, so both phases loop inside the graph (ONNX Scan for the stateful phases
generation and scoring spend their time in, Loop for the others); each model's weights are stored
once, as initializers of the main graph that every loop reads.

Products: with precision "int8" every weight matrix is int8 with one scale per output channel, and
the activations it multiplies are quantized with a fixed scale (they are LSTM outputs, o·tanh(c), always
in (-1, 1)): QuantizeLinear + MatMulInteger + Cast + Mul + Add, standard ONNX ops that any runtime has
and that onnxruntime fuses into one integer kernel (the Add inside it when the addend is a constant
bias). Each pair of neighbouring weights along the input axis stays within PAIR_LIMIT, so that the
integer products are exact on every CPU (kernels without VNNI add two products in int16). A fixed
scale (not DynamicQuantizeLinear's per-tensor range) keeps each stream's arithmetic independent of the
others in a batch. Each layer's h is quantized once per step, for the layer above
and for the next step. The first layer's input weights are a lookup table (the input is one-hot),
stored int8 and dequantized once per call.

Drawing is charsdk.sampling's Gumbel-max rule, argmax(logits + T·g), with optional top-k / top-p; g
is computed for the whole call at once from uniform numbers that the caller's seeded generator
supplies. The LSTM cell is written out with 2-D tensors (faster than onnxruntime's LSTM kernel for one
step of a small batch). Window mode keeps maxlen staggered windows per stream (see
charsdk.graph_backend), the same arithmetic as rerunning the last maxlen characters from a zero state.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charsdk.sampling import LOG_LOG_CAP
from charsdk.vocab import StateSpec

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
OPSET = 17
PRECISIONS = ("int8", "fp32")
ACTIVATION_SCALE = 1 / 127.5  # activations in (-1, 1) as uint8 around the zero point 128
node = helper.make_node


# u8 x s8 integer products without VNNI (onnxruntime's AVX2 and AVX-512BW kernels: vpmaddubsw) add each two
# neighbouring products along the input axis in int16, which saturates past 32,767. Activations reach 255,
# so each such pair of weights, rows 2i and 2i+1 of a column, must stay within 128 in magnitude:
# 255 x 128 = 32,640 fits. VNNI, Arm's dot products and the wasm runtime add in int32: exact anyway.
PAIR_LIMIT = 128


def quantize_per_channel(weights: np.ndarray, pair_limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights [in, out] with one float32 scale per output channel: the largest weight of
    a column at +-127. With pair_limit (weights an integer product multiplies), each column's largest
    weight is set at whichever level from pair_limit / 2 to 127 gives the least squared error once its
    pairs are brought within the limit (`within_pair_limit`): a column of a few large weights keeps 127,
    one of many large neighbours gives up resolution rather than clipping them."""
    largest = np.maximum(np.abs(weights).max(axis=0), 1e-30)
    if pair_limit is None:
        return np.round(weights / largest * 127).astype(np.int8), (largest / 127).astype(np.float32)
    best_error, best_q, best_scale = np.full(weights.shape[1], np.inf), None, None
    for level in range(pair_limit // 2, 128):
        scale = largest / level
        q = within_pair_limit(weights / scale, pair_limit)
        error = ((weights - q * scale) ** 2).sum(axis=0)
        better = error < best_error
        best_error = np.where(better, error, best_error)
        best_q = q if best_q is None else np.where(better, q, best_q)
        best_scale = scale if best_scale is None else np.where(better, scale, best_scale)
    return best_q.astype(np.int8), best_scale.astype(np.float32)


def within_pair_limit(units: np.ndarray, limit: int = PAIR_LIMIT) -> np.ndarray:
    """Integers nearest to `units` [in, out] (weights over their scale, within +-127) whose neighbouring
    rows 2i, 2i+1 satisfy |q[2i]| + |q[2i+1]| <= limit in every column. A pair over the limit is moved to
    the nearest point within it (both magnitudes lowered by the same amount: the Euclidean projection),
    then rounded; pairs within it are only rounded. An odd last row has no neighbour (padded with zero)."""
    q = np.round(units).clip(-127, 127)
    rows = len(units) - len(units) % 2
    a, b = np.abs(units[0:rows:2]), np.abs(units[1:rows:2])
    over = np.abs(q[0:rows:2]) + np.abs(q[1:rows:2]) > limit
    excess = np.maximum(a + b - limit, 0) / 2
    first = np.round(a - excess).clip(0, limit)
    second = np.minimum(np.round(b - excess), limit - first)
    q[0:rows:2] = np.where(over, np.sign(units[0:rows:2]) * first, q[0:rows:2])
    q[1:rows:2] = np.where(over, np.sign(units[1:rows:2]) * second, q[1:rows:2])
    return q


def overflowing_pairs(q: np.ndarray, limit: int = PAIR_LIMIT) -> int:
    """How many pairs of neighbouring rows of int8 weights [in, out] exceed `limit` in magnitude."""
    rows = len(q) - len(q) % 2
    pairs = np.abs(q[0:rows:2].astype(np.int32)) + np.abs(q[1:rows:2].astype(np.int32))
    return int((pairs > limit).sum())


def product_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The int8 weight matrices a graph's MatMulInteger nodes multiply by (in loop bodies too)."""
    names, graphs = set(), [model.graph]
    while graphs:
        g = graphs.pop()
        for n in g.node:
            names |= {n.input[1]} if n.op_type == "MatMulInteger" else set()
            graphs += [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH]
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in names}


def quantize(x: str, out: str) -> onnx.NodeProto:
    """An LSTM output in (-1, 1) as uint8 at the fixed activation scale (int8 products take it so)."""
    return node("QuantizeLinear", [x, "act_scale", "act_zero"], [out])


def runtime_scale_nodes(sized_input: str) -> list[onnx.NodeProto]:
    """"act_scale_runtime": ACTIVATION_SCALE times 1, the 1 read from the size of a graph input.

    onnxruntime fuses MatMulInteger -> Cast -> Mul(scale) -> Add(constant bias) into one integer kernel
    with the bias added inside only when the scale is a product computed in the graph. A product of two
    constants is folded before that fusion runs, so one factor must be a value onnxruntime cannot fold."""
    return [node("Size", [sized_input], ["scale_source_size"]),
            node("Min", ["scale_source_size", "one_i64"], ["scale_source_one"]),
            node("Cast", ["scale_source_one"], ["scale_source_one_f"], to=F32),
            node("Mul", ["act_scale", "scale_source_one_f"], ["act_scale_runtime"])]


def product(x: str, weights: str, addend: str, out: str, precision: str) -> list[onnx.NodeProto]:
    """out = x @ weights + addend: in float32 one Gemm; in int8, x already quantized (`quantize`) times
    int8 weights "<weights>_q" with one scale per column in "<weights>_scale" (standard ONNX ops, which
    onnxruntime fuses into one integer kernel, the addend included when it is a constant)."""
    if precision == "fp32":
        return [node("Gemm", [x, weights, addend], [out])]
    return [node("MatMulInteger", [x, f"{weights}_q", "act_zero", f"{weights}_zero"], [f"{out}_int"]),
            node("Cast", [f"{out}_int"], [f"{out}_float"], to=F32),
            node("Mul", ["act_scale_runtime", f"{weights}_scale"], [f"{out}_scale"]),
            node("Mul", [f"{out}_float", f"{out}_scale"], [f"{out}_product"]),
            node("Add", [f"{out}_product", addend], [out])]


def weight_arrays(layers, dense, precision: str) -> dict[str, np.ndarray]:
    """Initializers for Keras-ordered weights: per LSTM layer (kernel [I, 4U], recurrent [U, 4U],
    bias [4U]) with gates i, f, c, o; dense (kernel [U, V], bias [V]).

    Gates are reordered to i, o, f, c (one sigmoid over the first 3U). Layer 0's input is one-hot, so
    its kernel is a table of rows with the bias folded in, plus a last row for "no character yet" (the
    bias alone). Deeper layers multiply [input, h] by their stacked [kernel; recurrent] in one product."""
    arrays: dict[str, np.ndarray] = {}

    def matrix(name, value):
        if precision == "fp32":
            arrays[name] = value.astype(np.float32)
        else:
            arrays[f"{name}_q"], scale = quantize_per_channel(value, PAIR_LIMIT)
            arrays[f"{name}_scale"] = scale
            arrays[f"{name}_zero"] = np.zeros(scale.shape, np.int8)

    for k, (kernel, recurrent, bias) in enumerate(layers):
        units = recurrent.shape[0]
        order = np.concatenate([np.arange(units), 3 * units + np.arange(units),
                                units + np.arange(units), 2 * units + np.arange(units)])
        kernel, recurrent, bias = kernel[:, order], recurrent[:, order], bias[order]
        p = f"l{k}_"
        if k == 0:
            table = np.vstack([kernel, np.zeros((1, 4 * units), kernel.dtype)]) + bias
            if precision == "fp32":
                arrays[p + "table"] = table.astype(np.float32)
            else:
                arrays[p + "table_q"], arrays[p + "table_scale"] = quantize_per_channel(table)
            matrix(p + "recurrent", recurrent)
        else:
            matrix(p + "stacked", np.vstack([kernel, recurrent]))
            arrays[p + "bias"] = bias.astype(np.float32)
        arrays[p + "split"] = np.array([3 * units, units], np.int64)
        arrays[p + "split3"] = np.array([units] * 3, np.int64)
    matrix("dense", dense[0])
    arrays["dense_b"] = dense[1].astype(np.float32)
    return arrays


def _filter_nodes(logits: str) -> list[onnx.NodeProto]:
    """"kept": top-k, then top-p, of softmax(logits / T) sorted in decreasing order (axis 1 of [B, V]); in
    a masked loop, the logits a pattern has masked (the cut charsdk.engine makes on the masked
    distribution)."""
    return [
        node("Mul", [logits, "inv_t"], ["scaled"]),
        node("Softmax", ["scaled"], ["w"], axis=1),
        node("TopK", ["w", "k_all"], ["sorted", "sorted_idx"], axis=1, largest=1, sorted=1),
        node("Less", ["positions", "k_col"], ["in_k"]),
        node("Cast", ["in_k"], ["in_k_f"], to=F32),
        node("Mul", ["sorted", "in_k_f"], ["sorted_k"]),
        node("ReduceSum", ["sorted_k", "axis1"], ["sorted_sum"], keepdims=1),
        node("Div", ["sorted_k", "sorted_sum"], ["sorted_p"]),
        node("CumSum", ["sorted_p", "axis1_scalar"], ["cum"]),
        node("Sub", ["cum", "sorted_p"], ["mass_before"]),
        node("Less", ["mass_before", "p_col"], ["in_p"]),
        node("And", ["in_p", "in_k"], ["kept_sorted"]),
        node("Cast", ["kept_sorted"], ["kept_i"], to=I64),
        node("ReduceSum", ["kept_i", "axis1"], ["n_kept"], keepdims=1),
        node("Sub", ["n_kept", "one_i64"], ["last_kept"]),
        node("GatherElements", ["sorted", "last_kept"], ["threshold"], axis=1),
        node("GreaterOrEqual", ["w", "threshold"], ["kept"]),
    ]


def _ring_nodes(first: str) -> list[onnx.NodeProto]:
    """Window mode, before the cell: restart window t mod maxlen of every stream from a zero state
    (t = characters read so far, counting from `first`), and give the character to all maxlen windows
    of its stream."""
    return [
        node("Add", [first, "i"], ["t"]),
        node("Mod", ["t", "ring"], ["restart"]),
        node("Equal", ["window_of_row", "restart"], ["restarting"]),
        node("Not", ["restarting"], ["keeping"]),
        node("Cast", ["keeping"], ["keep"], to=F32),
        node("Unsqueeze", ["keep", "axis1"], ["keep_col"]),
        node("Unsqueeze", ["id", "axis1"], ["id_col"]),
        node("Expand", ["id_col", "ring_shape"], ["id_ring"]),
        node("Reshape", ["id_ring", "minus_one"], ["id_rows"]),
    ]


def _full_window_nodes(h: str) -> list[onnx.NodeProto]:
    """Window mode, after the cell: the hidden state of each stream's window that has now read
    maxlen characters (or everything, near the start)."""
    return [
        node("Add", ["t", "one_i64"], ["read"]),
        node("Mod", ["read", "ring"], ["read_mod"]),
        node("GreaterOrEqual", ["read", "ring"], ["wrapped"]),
        node("Where", ["wrapped", "read_mod", "zero_i64"], ["full"]),
        node("Add", ["stream_first_row", "full"], ["full_rows"]),
        node("Gather", [h, "full_rows"], ["h_full"], axis=0),
    ]


def _cell_nodes(n_layers: int, states: tuple[StateSpec, ...], precision: str, ring: bool,
                ids: str) -> list[onnx.NodeProto]:
    """Character ids [B] (or [B * maxlen] rows, ring) through the LSTM layers and the dense layer:
    "logits_next" [B, V] and each state's "<name>_next".

    int8: a layer's h is quantized once, for the layer above (or the dense layer) and for the next
    step's recurrent product: a stateful loop carries it quantized too ("<h>_q_in" -> "<h>_q_next")."""
    int8 = precision == "int8"
    nodes, x = [], None
    for layer in range(n_layers):
        h, c, p = states[2 * layer].input, states[2 * layer + 1].input, f"l{layer}_"
        h_in, c_in = f"{h}_in", f"{c}_in"
        if ring:
            nodes += [node("Mul", [h_in, "keep_col"], [f"{h}_kept"]),
                      node("Mul", [c_in, "keep_col"], [f"{c}_kept"])]
            h_in, c_in = f"{h}_kept", f"{c}_kept"
            if int8:
                nodes.append(quantize(h_in, f"{h}_kept_q"))
                h_in = f"{h}_kept_q"
        elif int8:
            h_in = f"{h}_q_in"
        if x is None:  # one-hot input: its product is a row of the table
            nodes.append(node("Gather", ["l0_table_f", ids], [p + "xw"], axis=0))
            nodes += product(h_in, p + "recurrent", p + "xw", p + "gates", precision)
        else:
            nodes.append(node("Concat", [x, h_in], [p + "xh"], axis=1))
            nodes += product(p + "xh", p + "stacked", p + "bias", p + "gates", precision)
        nodes += [
            node("Split", [p + "gates", p + "split"], [p + "iof_pre", p + "g_pre"], axis=1),
            node("Sigmoid", [p + "iof_pre"], [p + "iof"]),
            node("Tanh", [p + "g_pre"], [p + "g"]),
            node("Split", [p + "iof", p + "split3"], [p + "i", p + "o", p + "f"], axis=1),
            node("Mul", [p + "f", c_in], [p + "fc"]),
            node("Mul", [p + "i", p + "g"], [p + "ig"]),
            node("Add", [p + "fc", p + "ig"], [f"{c}_next"]),
            node("Tanh", [f"{c}_next"], [p + "tc"]),
            node("Mul", [p + "o", p + "tc"], [f"{h}_next"]),
        ]
        x = f"{h}_next"
        if int8 and not (ring and layer == n_layers - 1):  # ring: the dense layer takes B rows of it
            nodes.append(quantize(x, f"{h}_q_next"))
            x = f"{h}_q_next"
    if ring:
        nodes += _full_window_nodes(x)
        x = "h_full"
        if int8:
            nodes.append(quantize(x, "h_full_q"))
            x = "h_full_q"
    return nodes + product(x, "dense", "dense_b", "logits_next", precision)


def carries_quantized(precision: str, ring: bool) -> bool:
    """Whether a loop carries each layer's h quantized (int8 stateful loops; see _cell_nodes)."""
    return precision == "int8" and not ring


def _loop_body(n_layers: int, states: tuple[StateSpec, ...], vocab_size: int, precision: str,
               phase: str, ring: bool, scanned: bool = False, masked: bool = False) -> onnx.GraphProto:
    """One iteration. phase "read": take character i of "ids_tb" [T, B], step, and also emit the
    logits after it; "draw" / "draw_filtered": draw argmax(logits + T·g) (over the top-k / top-p
    characters if filtered), step, and emit the character; `masked`: the logits first masked by each
    stream's pattern, whose state it carries ("fsm"). `scanned`: the body of a Scan, which is given the
    character "id" (read) or the noise "g" (draw) of its step instead of taking it."""
    if phase == "read":
        nodes = [] if scanned else [node("Gather", ["ids_tb", "i"], ["id"], axis=0)]
    else:
        filtered, logits_drawn = phase == "draw_filtered", "logits_masked" if masked else "logits_in"
        nodes = [
            *([] if scanned else [node("Gather", ["noise", "i"], ["g"], axis=1)]),
            *(_pattern_mask_nodes() if masked else []),
            node("Add", [logits_drawn, "g"], ["perturbed"]),
            *(_filter_nodes(logits_drawn)
              + [node("Where", ["kept", "perturbed", "minus_inf"], ["perturbed_kept"])] if filtered else []),
            node("ArgMax", ["perturbed_kept" if filtered else "perturbed"], ["id"], axis=1, keepdims=0),
            *(_pattern_step_nodes() if masked else []),
        ]
    if ring:
        nodes += _ring_nodes("start" if phase == "read" else "draw_start")
    nodes += _cell_nodes(n_layers, states, precision, ring, "id_rows" if ring else "id")

    def carried(suffix):
        quantized = [helper.make_tensor_value_info(f"{s.input}_q_{suffix}", TensorProto.UINT8,
                                                   [None, s.size])
                     for s in states[::2]] if carries_quantized(precision, ring) else []
        fsm = [helper.make_tensor_value_info(f"fsm_{suffix}", I64, [None])] if masked else []
        return [helper.make_tensor_value_info(f"{s.input}_{suffix}", F32, [None, s.size])
                for s in states] + fsm + quantized

    logits = lambda name: helper.make_tensor_value_info(name, F32, [None, vocab_size])  # noqa: E731
    if phase == "read":
        nodes.append(node("Identity", ["logits_next"], ["logits_read"]))
        emitted = logits("logits_read")
    else:
        emitted = helper.make_tensor_value_info("id", I64, [None])
    carried_in, carried_out = [logits("logits_in"), *carried("in")], [logits("logits_next"), *carried("next")]
    name = body_name(phase, ring, masked)
    if scanned:
        given = (helper.make_tensor_value_info("id", I64, [None]) if phase == "read"
                 else helper.make_tensor_value_info("g", F32, [None, vocab_size]))
        return helper.make_graph(nodes, name, [*carried_in, given], [*carried_out, emitted])
    return helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         *carried_in],
        [helper.make_tensor_value_info("cond_in", BOOL, []), *carried_out, emitted],
    )


def _pattern_mask_nodes() -> list[onnx.NodeProto]:
    """A draw's logits masked by each stream's pattern: row "fsm_in" of "pattern_mask" (0 where the
    pattern allows a character or accepts, -inf elsewhere; a stream without one is in a state that allows
    every character)."""
    return [node("Gather", ["pattern_mask", "fsm_in"], ["fsm_mask"], axis=0),
            node("Add", ["logits_in", "fsm_mask"], ["logits_masked"])]


def _pattern_step_nodes() -> list[onnx.NodeProto]:
    """Each stream's pattern state after the character it drew: "pattern_next"[fsm_in, id]."""
    return [node("Gather", ["pattern_next", "fsm_in"], ["fsm_rows"], axis=0),
            node("Unsqueeze", ["id", "axis1"], ["fsm_id"]),
            node("GatherElements", ["fsm_rows", "fsm_id"], ["fsm_after"], axis=1),
            node("Squeeze", ["fsm_after", "axis1"], ["fsm_next"])]


def body_name(phase: str, ring: bool, masked: bool = False) -> str:
    """The name of a phase's loop body: "draw_stateful" is the one that generation spends its time in."""
    return f"{phase}_{'masked_' if masked else ''}{'window' if ring else 'stateful'}"


def _scan_nodes(k: int, trips: str, sequence: str, dummy: onnx.TensorProto, tail: list[str],
                carried: list[str], outputs: list[str], discarded: list[str], scanned: str,
                body: onnx.GraphProto) -> list[onnx.NodeProto]:
    """A Scan over the first `trips` steps of `sequence` [steps, rows, *tail]: `carried` in, `outputs`
    (and `discarded`) out, the steps' outputs as `scanned`.

    A Scan costs less per step than a Loop, but onnxruntime's Scan fails on a sequence of length 0, and
    a phase not taken must pass its values through. So a Scan not taken runs one step of `dummy` on zero
    rows, and each carried value comes out as the Scan's rows followed by the rows it did not run."""
    p = f"scan{k}_"
    nodes = [
        node("Greater", [trips, "zero_i64"], [p + "taken"]),
        node("Where", [p + "taken", "rows", "zero_i64"], [p + "rows"]),
        node("Min", [trips, "one_i64"], [p + "some"]),
        node("Sub", ["one_i64", p + "some"], [p + "pad"]),
        node("Unsqueeze", [trips, "axis0"], [p + "trips_1d"]),
        node("Unsqueeze", [p + "rows", "axis0"], [p + "rows_1d"]),
        node("Unsqueeze", [p + "pad", "axis0"], [p + "pad_1d"]),
        node("Concat", [p + "trips_1d", p + "rows_1d"], [p + "ends"], axis=0),
        node("Slice", [sequence, "zeros_2", p + "ends", "axes01"], [p + "steps"]),
        node("Concat", [p + "pad_1d", p + "rows_1d", *tail], [p + "dummy_shape"], axis=0),
        node("ConstantOfShape", [p + "dummy_shape"], [p + "dummy"], value=dummy),
        node("Concat", [p + "steps", p + "dummy"], [p + "sequence"], axis=0),
        *[node("Slice", [name, "zero_1d", p + "rows_1d", "axis0"], [f"{p}{name}_in"]) for name in carried],
        node("Scan", [*[f"{p}{name}_in" for name in carried], p + "sequence"],
             [*[f"{p}{name}_out" for name in outputs], *discarded, scanned], body=body, num_scan_inputs=1),
    ]
    for name, out in zip(carried[: len(outputs)], outputs, strict=True):  # then the rows it did not run
        nodes += [node("Slice", [name, p + "rows_1d", "max_1d", "axis0"], [f"{p}{name}_rest"]),
                  node("Concat", [f"{p}{out}_out", f"{p}{name}_rest"], [out], axis=0)]
    return nodes


# Phases run as Scans when stateful: their sequence, a dummy step's value, and the sequence's shape past
# [steps, rows]. (Filtered draws keep a Loop: their per-stream columns would need cutting to the rows.)
SCANNED = {"read": ("ids_tb", numpy_helper.from_array(np.zeros(1, np.int64)), []),
           "draw": ("noise_kb", numpy_helper.from_array(np.zeros(1, np.float32)), ["vocab_1d"])}


def build_graph(layers, dense, states: tuple[StateSpec, ...], precision: str = "int8") -> onnx.ModelProto:
    """The model graph (inputs and outputs: docs/model-format.md): the constants and weights, the nodes
    every call runs first (shapes, Gumbel noise, filter settings), which loop of each phase runs, window
    mode's ring, then the six loops in a chain."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if 2 * len(layers) != len(states):
        raise ValueError("the model has a different number of LSTM layers than its states")
    return graph_of(_constants(layers, dense, precision), states, precision)


def graph_of(arrays: dict[str, np.ndarray], states: tuple[StateSpec, ...], precision: str) -> onnx.ModelProto:
    """The model graph around its initializers (`_constants`: an export's, or those of an earlier export,
    to build it again with this code: train/regraph.py)."""
    V = int(arrays["vocab_i64"])
    nodes = [*_table_nodes(precision), *_prelude_nodes(), *_trip_count_nodes(), *_ring_constant_nodes(states),
             *_loop_chain_nodes(len(states) // 2, states, V, precision)]
    inputs, outputs = _graph_io(states, V)
    graph = helper.make_graph(nodes, "charsdk", inputs, outputs,
                              initializer=[numpy_helper.from_array(v, name) for name, v in arrays.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charsdk")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _constants(layers, dense, precision: str) -> dict[str, np.ndarray]:
    """The graph's initializers: constants, the optional inputs' defaults, and the weights."""
    V = dense[0].shape[1]
    arrays = {
        "zero_i64": np.array(0, np.int64), "one_i64": np.array(1, np.int64),
        "vocab_i64": np.array(V, np.int64), "vocab_1d": np.array([V], np.int64),
        "axis0": np.array([0], np.int64),
        "axis1": np.array([1], np.int64), "minus_one": np.array([-1], np.int64),
        "minus_inf": np.array(-np.inf, np.float32), "log_log_cap": np.array(LOG_LOG_CAP, np.float32),
        "tiny": np.array(1e-30, np.float32), "axes12": np.array([1, 2], np.int64),
        "axis1_scalar": np.array(1, np.int64), "k_all": np.array([V], np.int64),
        "positions": np.arange(V, dtype=np.int64)[None, :], "true": np.array(True),
        "zeros_2": np.zeros(2, np.int64), "axes01": np.array([0, 1], np.int64),
        "zero_1d": np.zeros(1, np.int64), "max_1d": np.array([np.iinfo(np.int64).max], np.int64),
        "act_scale": np.array(ACTIVATION_SCALE, np.float32), "act_zero": np.array(128, np.uint8),
        **weight_arrays(layers, dense, precision),
    }
    if precision == "fp32":
        del arrays["act_scale"], arrays["act_zero"]
    else:
        arrays["l0_table_zero"] = np.zeros(arrays["l0_table_scale"].shape, np.int8)
    return arrays


def _table_nodes(precision: str) -> list[onnx.NodeProto]:
    """The nodes that make the first layer's input table float32."""
    if precision == "fp32":
        return [node("Identity", ["l0_table"], ["l0_table_f"])]
    return [node("DequantizeLinear", ["l0_table_q", "l0_table_scale", "l0_table_zero"], ["l0_table_f"],
                 axis=1),
            *runtime_scale_nodes("logits")]


def _loop_chain_nodes(n_layers: int, states: tuple[StateSpec, ...], V: int,
                      precision: str) -> list[onnx.NodeProto]:
    """Ten loops in a chain, in the main graph: read (stateful, window), then draw (stateful, window, each
    plain or with top-k / top-p, each unmasked or masked by the streams' patterns), and the outputs
    gathered from them. The inputs choose one of each phase by giving it the trip count and the others 0
    (a loop of 0 trips passes its values through; so does a Scan, see _scan_nodes). Main-graph loops
    rather than If branches: onnxruntime pre-packs a weight for as many kernels as main-graph nodes use
    it, so weights used only inside If branches would be packed for one loop and multiplied unpacked in
    the rest. Only the masked loops carry the patterns' states ("fsm"): an unmasked draw pays nothing
    for them."""
    loops = [("read", False, False, "reads_stateful"), ("read", True, False, "reads_window"),
             ("draw", False, False, "draws_plain"), ("draw_filtered", False, False, "draws_filtered"),
             ("draw", True, False, "draws_window_plain"),
             ("draw_filtered", True, False, "draws_window_filtered"),
             ("draw", False, True, "draws_masked"), ("draw_filtered", False, True, "draws_masked_filtered"),
             ("draw", True, True, "draws_window_masked"),
             ("draw_filtered", True, True, "draws_window_masked_filtered")]
    carried, fsm = ["logits", *[s.input for s in states]], "fsm"
    scans: dict[str, list[str]] = {"read": [], "draw": []}
    loop_nodes = []
    for k, (phase, ring, masked, trips) in enumerate(loops):
        given = [*carried, fsm] if masked else carried
        out = [f"{name}_{k}" for name in given]
        scan = f"{'read' if phase == 'read' else 'ids'}_{k}"
        # a loop that carries h quantized starts from the quantized h it is given; its own is not kept
        quantized = carried[1::2] if carries_quantized(precision, ring) else []
        loop_nodes += [quantize(h, f"{h}_q_start_{k}") for h in quantized]
        starts, ends = [f"{h}_q_start_{k}" for h in quantized], [f"{h}_q_end_{k}" for h in quantized]
        if phase in SCANNED and not ring:  # the phases each call takes: a Scan (cheaper per step)
            body = _loop_body(n_layers, states, V, precision, phase, ring, scanned=True, masked=masked)
            sequence, dummy, tail = SCANNED[phase]
            loop_nodes += _scan_nodes(k, trips, sequence, dummy, tail, [*given, *starts], out, ends, scan,
                                      body)
        else:
            body = _loop_body(n_layers, states, V, precision, phase, ring, masked=masked)
            loop_nodes.append(node("Loop", [trips, "true", *given, *starts], [*out, *ends, scan], body=body))
        scans["read" if phase == "read" else "draw"].append(scan)
        carried, fsm = out[: len(carried)], out[-1] if masked else fsm
    # a loop of 0 trips emits an empty scan output of unknown shape: reshape before concatenating
    for phase, shape in (("read", "read_shape"), ("draw", "ids_shape_out")):
        for name in scans[phase]:
            loop_nodes.append(node("Reshape", [name, shape], [f"{name}_shaped"]))
    loop_nodes += [
        node("Concat", [f"{name}_shaped" for name in scans["read"]], ["read_logits"], axis=0),
        node("Concat", [f"{name}_shaped" for name in scans["draw"]], ["ids_out"], axis=0),
        node("Identity", [carried[0]], ["logits_out"]),
        *[node("Identity", [name], [s.output]) for name, s in zip(carried[1:], states, strict=True)],
    ]
    return loop_nodes


def _trip_count_nodes() -> list[onnx.NodeProto]:
    """Which loop of each phase runs: the inputs give it the trip count and the others 0. A draw is masked
    when the patterns' automata have more than the one state that allows every character."""
    nodes = [
        node("Greater", ["window", "zero_i64"], ["is_window"]),
        node("Not", ["is_window"], ["is_stateful"]),
        node("Not", ["use_filter"], ["no_filter"]),
        node("Shape", ["pattern_mask"], ["pattern_shape"]),
        node("Gather", ["pattern_shape", "zero_i64"], ["pattern_rows"], axis=0),
        node("Greater", ["pattern_rows", "one_i64"], ["use_pattern"]),
        node("Not", ["use_pattern"], ["no_pattern"]),
    ]
    for name, conditions, count in (
            ("reads_stateful", ["is_stateful"], "reads"), ("reads_window", ["is_window"], "reads"),
            ("draws_plain", ["is_stateful", "no_filter", "no_pattern"], "draws"),
            ("draws_filtered", ["is_stateful", "use_filter", "no_pattern"], "draws"),
            ("draws_window_plain", ["is_window", "no_filter", "no_pattern"], "draws"),
            ("draws_window_filtered", ["is_window", "use_filter", "no_pattern"], "draws"),
            ("draws_masked", ["is_stateful", "no_filter", "use_pattern"], "draws"),
            ("draws_masked_filtered", ["is_stateful", "use_filter", "use_pattern"], "draws"),
            ("draws_window_masked", ["is_window", "no_filter", "use_pattern"], "draws"),
            ("draws_window_masked_filtered", ["is_window", "use_filter", "use_pattern"], "draws")):
        on = conditions[0]
        for i, condition in enumerate(conditions[1:]):
            nodes.append(node("And", [on, condition], [f"{name}_on{i}"]))
            on = f"{name}_on{i}"
        nodes.append(node("Where", [on, count, "zero_i64"], [name]))
    return nodes


def _ring_constant_nodes(states: tuple[StateSpec, ...]) -> list[onnx.NodeProto]:
    """Window mode: row r of the states is window r mod maxlen of stream r // maxlen."""
    return [
        node("Max", ["window", "one_i64"], ["ring"]),  # 1 in stateful mode, where the ring is unused
        node("Shape", [states[0].input], ["rows_shape"]),
        node("Gather", ["rows_shape", "zero_i64"], ["rows"], axis=0),
        node("Range", ["zero_i64", "rows", "one_i64"], ["row_ids"]),
        node("Mod", ["row_ids", "ring"], ["window_of_row"]),
        node("Range", ["zero_i64", "streams", "one_i64"], ["stream_ids"]),
        node("Mul", ["stream_ids", "ring"], ["stream_first_row"]),
        node("Unsqueeze", ["streams", "axis0"], ["streams_1d"]),
        node("Unsqueeze", ["ring", "axis0"], ["ring_1d"]),
        node("Concat", ["streams_1d", "ring_1d"], ["ring_shape"], axis=0),
        node("Expand", ["pattern_state", "streams_1d"], ["fsm"]),  # one state for all, or one per stream
    ]


def _prelude_nodes() -> list[onnx.NodeProto]:
    """What every call computes first: the ids' shapes, the Gumbel noise, 1/T and the top-k / top-p
    settings."""
    return [
        node("Transpose", ["ids"], ["ids_tb"], perm=[1, 0]),
        node("Shape", ["ids"], ["ids_shape"]),
        node("Gather", ["ids_shape", "zero_i64"], ["streams"], axis=0),
        node("Gather", ["ids_shape", "one_i64"], ["reads"], axis=0),
        node("Add", ["start", "reads"], ["draw_start"]),
        node("Unsqueeze", ["streams", "axis0"], ["streams_shape"]),
        node("Concat", ["minus_one", "streams_shape"], ["ids_shape_out"], axis=0),
        node("Concat", ["minus_one", "streams_shape", "vocab_1d"], ["read_shape"], axis=0),
        # noise = T·g for every stream and step (charsdk.sampling.gumbel_noise); 1/T for the filters
        node("Log", ["uniforms"], ["log_u"]),
        node("Neg", ["log_u"], ["minus_log_u"]),
        node("Log", ["minus_log_u"], ["log_log"]),
        node("Min", ["log_log", "log_log_cap"], ["log_log_capped"]),
        node("Neg", ["temperature"], ["minus_t"]),
        node("Unsqueeze", ["minus_t", "axes12"], ["minus_t_3d"]),
        node("Mul", ["log_log_capped", "minus_t_3d"], ["noise"]),
        node("Transpose", ["noise"], ["noise_kb"], perm=[1, 0, 2]),  # [K, B, V]: the Scans' sequence
        node("Max", ["temperature", "tiny"], ["t_positive"]),
        node("Reciprocal", ["t_positive"], ["inv_temperature"]),
        node("Unsqueeze", ["inv_temperature", "axis1"], ["inv_t"]),
        node("Equal", ["top_k", "zero_i64"], ["k_off"]),
        node("Min", ["top_k", "vocab_i64"], ["k_capped"]),
        node("Where", ["k_off", "vocab_i64", "k_capped"], ["k"]),
        node("Unsqueeze", ["k", "axis1"], ["k_col"]),
        node("Unsqueeze", ["top_p", "axis1"], ["p_col"]),
        node("Shape", ["uniforms"], ["uniforms_shape"]),
        node("Gather", ["uniforms_shape", "one_i64"], ["draws"], axis=0),
    ]


# The automata of the streams' patterns, stacked (charsdk.engine), and each stream's state; a caller
# without patterns gives one state that allows every character: zeros [1, V], zeros [1, V], zeros [1].
PATTERN_INPUTS = (("pattern_mask", F32, ["S", "V"]), ("pattern_next", I64, ["S", "V"]),
                  ("pattern_state", I64, ["N"]))


def _graph_io(states: tuple[StateSpec, ...], V: int):
    """The graph's inputs and outputs (docs/model-format.md)."""
    def batch_info(name, size, dtype=F32):
        return helper.make_tensor_value_info(name, dtype, ["B", size])

    inputs = [helper.make_tensor_value_info("ids", I64, ["B", "T"]), batch_info("logits", V),
              *[batch_info(s.input, s.size) for s in states],
              helper.make_tensor_value_info("uniforms", F32, ["B", "K", V]),
              helper.make_tensor_value_info("temperature", F32, ["B"]),
              helper.make_tensor_value_info("top_k", I64, ["B"]),
              helper.make_tensor_value_info("top_p", F32, ["B"]),
              helper.make_tensor_value_info("use_filter", BOOL, []),
              helper.make_tensor_value_info("window", I64, []),
              helper.make_tensor_value_info("start", I64, []),
              *[helper.make_tensor_value_info(name, dtype, shape) for name, dtype, shape in PATTERN_INPUTS]]
    outputs = [batch_info("logits_out", V), *[batch_info(s.output, s.size) for s in states],
               helper.make_tensor_value_info("ids_out", I64, ["K", "B"]),
               helper.make_tensor_value_info("read_logits", F32, ["T", "B", V])]
    return inputs, outputs

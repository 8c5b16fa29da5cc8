"""sampler.onnx: many characters per onnxruntime call.

One call to model.onnx per character costs ~16 µs of onnxruntime overhead, more than the arithmetic
of one LSTM step. This graph runs model.onnx's weights inside an ONNX Loop that, per iteration,
draws a character and feeds it back. Drawing is charsdk.sampling's Gumbel-max rule,
argmax(logits + T·g), with optional top-k / top-p; g is computed for the whole call at once from
uniform numbers that numpy's seeded generator supplies (so every result is reproducible). Per
character that is three kernels where a softmax and a cumulative sum took nine. The LSTM cell is
written out with 2-D tensors: for one step of a small batch that is faster than onnxruntime's LSTM
kernel, and the one-hot input becomes a row lookup.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charsdk.sampling import LOG_LOG_CAP
from charsdk.vocab import StateSpec

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
node = helper.make_node
PLAIN_LSTM = {"activations": [b"Sigmoid", b"Tanh", b"Tanh"], "direction": b"forward"}


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto:
    return next(n for n in graph.node if name in n.output)


def _cell_weights(step: onnx.ModelProto, vocab_size: int):
    """Per LSTM layer: (input weights [I, 4U] with the bias folded in for the one-hot first layer,
    bias [4U], recurrent weights [U, 4U]); and the dense layer's (weights [U, V], bias [V])."""
    graph = step.graph
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    softmax = _producer(graph, "probs")
    add = _producer(graph, softmax.input[0])
    matmul = _producer(graph, add.input[0])
    if (softmax.op_type, add.op_type, matmul.op_type) != ("Softmax", "Add", "MatMul"):
        raise ValueError("model.onnx does not end in MatMul/Add/Softmax: cannot build a sampler")
    layers = []
    for lstm in (n for n in graph.node if n.op_type == "LSTM"):
        attributes = {a.name: helper.get_attribute_value(a) for a in lstm.attribute}
        if any(attributes.get(k, v) != v for k, v in PLAIN_LSTM.items()) or "clip" in attributes:
            raise ValueError(f"{lstm.name} is not a plain forward sigmoid/tanh LSTM")
        W, R, B = (weights[name][0] for name in lstm.input[1:4])  # [4U, I], [4U, U], [8U]; i, o, f, c
        units = R.shape[1]
        bias = B[: 4 * units] + B[4 * units :]
        layers.append((np.ascontiguousarray(W.T), bias, np.ascontiguousarray(R.T)))
    return layers, (weights[matmul.input[1]], weights[add.input[1]])


def _filter_nodes() -> list[onnx.NodeProto]:
    """"kept": top-k, then top-p, of softmax(logits / T) sorted in decreasing order (axis 1 of [B, V])."""
    return [
        node("Mul", ["logits_in", "inv_t"], ["scaled"]),
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


def _ring_nodes() -> list[onnx.NodeProto]:
    """Window mode, before the cell: restart window t mod maxlen of every stream from a zero state
    (t = characters read so far), and give the drawn character to all maxlen windows of its stream."""
    return [
        node("Add", ["start", "i"], ["t"]),
        node("Mod", ["t", "window"], ["restart"]),
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
        node("Mod", ["read", "window"], ["read_mod"]),
        node("GreaterOrEqual", ["read", "window"], ["wrapped"]),
        node("Where", ["wrapped", "read_mod", "zero_i64"], ["full"]),
        node("Add", ["stream_first_row", "full"], ["full_rows"]),
        node("Gather", [h, "full_rows"], ["h_full"], axis=0),
    ]


def _loop_body(n_layers: int, states: tuple[StateSpec, ...], vocab_size: int, filtered: bool,
               ring: bool):
    """One iteration: draw argmax(logits + T·g) (over the top-k / top-p characters if filtered),
    feed it through the LSTM layers.

    ring: window mode, where each stream's states are maxlen staggered windows [B * maxlen, U]."""
    nodes = [
        node("Gather", ["noise", "i"], ["g"], axis=1),
        node("Add", ["logits_in", "g"], ["perturbed"]),
        *(_filter_nodes() + [node("Where", ["kept", "perturbed", "minus_inf"], ["perturbed_kept"])]
          if filtered else []),
        node("ArgMax", ["perturbed_kept" if filtered else "perturbed"], ["id"], axis=1, keepdims=0),
        *(_ring_nodes() if ring else []),
    ]
    x = None
    for layer in range(n_layers):
        h, c, p = states[2 * layer].input, states[2 * layer + 1].input, f"l{layer}_"
        h_in, c_in = f"{h}_in", f"{c}_in"
        if ring:
            nodes += [node("Mul", [h_in, "keep_col"], [f"{h}_kept"]),
                      node("Mul", [c_in, "keep_col"], [f"{c}_kept"])]
            h_in, c_in = f"{h}_kept", f"{c}_kept"
        if x is None:  # one-hot input: the input projection is a row of the table
            nodes.append(node("Gather", [p + "input", "id_rows" if ring else "id"], [p + "xw"], axis=0))
        else:
            nodes.append(node("Gemm", [x, p + "input", p + "bias"], [p + "xw"]))
        nodes += [
            node("Gemm", [h_in, p + "recurrent", p + "xw"], [p + "gates"]),
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
    if ring:
        nodes += _full_window_nodes(x)
        x = "h_full"
    nodes.append(node("Gemm", [x, "dense_w", "dense_b"], ["logits_next"]))

    def carried(suffix):
        return [helper.make_tensor_value_info(f"{s.input}_{suffix}", F32, ["B", s.size]) for s in states]

    logits = lambda name: helper.make_tensor_value_info(name, F32, ["B", vocab_size])  # noqa: E731
    return helper.make_graph(
        nodes, "draw_and_step",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond_in", BOOL, []),
         logits("logits_in"), *carried("in")],
        [helper.make_tensor_value_info("cond_in", BOOL, []), logits("logits_next"), *carried("next"),
         helper.make_tensor_value_info("id", I64, ["B"])],
    )


def build_sampler(step: onnx.ModelProto, vocab_size: int, states: tuple[StateSpec, ...]) -> onnx.ModelProto:
    """Inputs: logits [B,V] (e.g. log probs), the states, uniforms [B,K,V] in [0,1) (K characters
    per stream), temperature [B] (0 = greedy), top_k [B] i64 (0 = off), top_p [B] (1 = off), use_filter
    (bool: false skips top-k/top-p), window (i64: 0 = stateful; maxlen = window mode, the states then
    [B * maxlen, U], see charsdk.generator), start (i64: characters read so far, window mode).
    Outputs: ids [K,B] (each drawn, then fed), logits_out and the states after them."""
    layers, (dense_w, dense_b) = _cell_weights(step, vocab_size)
    if 2 * len(layers) != len(states):
        raise ValueError("model.onnx has a different number of LSTM layers than its states")
    V = vocab_size
    arrays = {
        "zero_i64": np.array(0, np.int64), "one_i64": np.array(1, np.int64),
        "vocab_i64": np.array(V, np.int64), "axis0": np.array([0], np.int64),
        "axis1": np.array([1], np.int64), "minus_one": np.array([-1], np.int64),
        "minus_inf": np.array(-np.inf, np.float32), "log_log_cap": np.array(LOG_LOG_CAP, np.float32),
        "tiny": np.array(1e-30, np.float32), "axes12": np.array([1, 2], np.int64),
        "axis1_scalar": np.array(1, np.int64), "k_all": np.array([V], np.int64),
        "positions": np.arange(V, dtype=np.int64)[None, :], "true": np.array(True),
        "dense_w": dense_w, "dense_b": dense_b,
    }
    for layer, (input_weights, bias, recurrent) in enumerate(layers):
        p, units = f"l{layer}_", recurrent.shape[0]
        arrays |= {
            p + "input": input_weights + bias if layer == 0 else input_weights,
            p + "bias": bias, p + "recurrent": recurrent,
            p + "split": np.array([3 * units, units], np.int64),
            p + "split3": np.array([units] * 3, np.int64),
        }
    arrays.pop("l0_bias")  # folded into l0_input

    outputs = ["logits_out", *[s.output for s in states], "ids"]
    loop_inputs = ["steps", "true", "logits", *[s.input for s in states]]

    def branch(tag, extra_nodes, then_graph, else_graph):
        names = [f"{name}_{tag}" for name in outputs]
        return helper.make_graph(
            [*extra_nodes, node("If", ["use_filter"], names, then_branch=then_graph,
                                else_branch=else_graph)], tag, [],
            [helper.make_tensor_value_info(name, I64 if name.startswith("ids") else F32, None)
             for name in names])

    def loop(tag, filtered, ring):
        names = [f"{name}_{tag}" for name in outputs]
        body = _loop_body(len(layers), states, V, filtered, ring)
        return helper.make_graph(
            [node("Loop", loop_inputs, names, body=body)], tag, [],
            [helper.make_tensor_value_info(name, I64 if name.startswith("ids") else F32, None)
             for name in names])

    # Four loops (stateful or window, with or without top-k/top-p): the Ifs choose once per call.
    ring_constants = [  # window mode: row r of the states is window r mod maxlen of stream r // maxlen
        node("Shape", [states[0].input], ["rows_shape"]),
        node("Gather", ["rows_shape", "zero_i64"], ["rows"], axis=0),
        node("Range", ["zero_i64", "rows", "one_i64"], ["row_ids"]),
        node("Mod", ["row_ids", "window"], ["window_of_row"]),
        node("Shape", ["logits"], ["logits_shape"]),
        node("Gather", ["logits_shape", "zero_i64"], ["streams"], axis=0),
        node("Range", ["zero_i64", "streams", "one_i64"], ["stream_ids"]),
        node("Mul", ["stream_ids", "window"], ["stream_first_row"]),
        node("Unsqueeze", ["streams", "axis0"], ["streams_1d"]),
        node("Unsqueeze", ["window", "axis0"], ["window_1d"]),
        node("Concat", ["streams_1d", "window_1d"], ["ring_shape"], axis=0),
    ]
    windowed = branch("windowed", ring_constants, loop("window_filtered", True, True),
                      loop("window_plain", False, True))
    stateful = branch("stateful", [], loop("filtered", True, False), loop("plain", False, False))
    nodes = [
        # noise = T·g for every stream and step (charsdk.sampling.gumbel_noise); 1/T for the filters
        node("Log", ["uniforms"], ["log_u"]),
        node("Neg", ["log_u"], ["minus_log_u"]),
        node("Log", ["minus_log_u"], ["log_log"]),
        node("Min", ["log_log", "log_log_cap"], ["log_log_capped"]),
        node("Neg", ["temperature"], ["minus_t"]),
        node("Unsqueeze", ["minus_t", "axes12"], ["minus_t_3d"]),
        node("Mul", ["log_log_capped", "minus_t_3d"], ["noise"]),
        node("Max", ["temperature", "tiny"], ["t_positive"]),
        node("Reciprocal", ["t_positive"], ["inv_temperature"]),
        node("Unsqueeze", ["inv_temperature", "axis1"], ["inv_t"]),
        node("Equal", ["top_k", "zero_i64"], ["k_off"]),
        node("Min", ["top_k", "vocab_i64"], ["k_capped"]),
        node("Where", ["k_off", "vocab_i64", "k_capped"], ["k"]),
        node("Unsqueeze", ["k", "axis1"], ["k_col"]),
        node("Unsqueeze", ["top_p", "axis1"], ["p_col"]),
        node("Shape", ["uniforms"], ["uniforms_shape"]),
        node("Gather", ["uniforms_shape", "one_i64"], ["steps"], axis=0),
        node("Greater", ["window", "zero_i64"], ["is_window"]),
        node("If", ["is_window"], outputs, then_branch=windowed, else_branch=stateful),
    ]

    def batch_info(name, size, dtype=F32):
        return helper.make_tensor_value_info(name, dtype, ["B", size])

    graph = helper.make_graph(
        nodes, "sampler",
        [batch_info("logits", V), *[batch_info(s.input, s.size) for s in states],
         helper.make_tensor_value_info("uniforms", F32, ["B", "K", V]),
         helper.make_tensor_value_info("temperature", F32, ["B"]),
         helper.make_tensor_value_info("top_k", I64, ["B"]),
         helper.make_tensor_value_info("top_p", F32, ["B"]),
         helper.make_tensor_value_info("use_filter", BOOL, []),
         helper.make_tensor_value_info("window", I64, []),
         helper.make_tensor_value_info("start", I64, [])],
        [batch_info("logits_out", V), *[batch_info(s.output, s.size) for s in states],
         helper.make_tensor_value_info("ids", I64, ["K", "B"])],
        initializer=[numpy_helper.from_array(v, name) for name, v in arrays.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="charsdk")
    model.ir_version = step.ir_version
    onnx.checker.check_model(model, full_check=True)
    return model

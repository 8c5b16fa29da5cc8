"""sampler.onnx: many characters per onnxruntime call.

One call to model.onnx per character costs ~16 µs of onnxruntime overhead, far more than the
arithmetic of one LSTM step. This graph wraps model.onnx's own nodes in an ONNX Loop that, per
iteration, draws a character from `probs` (temperature, top-k, top-p, inverse CDF in float64, with a
uniform number supplied by the caller so numpy's seeded generator keeps results reproducible) and
feeds it back. It computes exactly what charsdk.sampling.sample_batch does in numpy.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from charsdk.vocab import StateSpec


def build_sampler(step: onnx.ModelProto, vocab_size: int, states: tuple[StateSpec, ...],
                  input_name: str = "x", probs_name: str = "probs") -> onnx.ModelProto:
    """Inputs: probs [B,V], states, uniforms [K,B] f64, inv_temperature [B] f64 (1/T, inf = greedy),
    top_k [B] i64 (0 = off), top_p [B] f64 (1 = off), use_filter (False skips top-k/top-p).
    Outputs: ids [K,B] (each drawn, then fed), probs_out and states after the last one."""
    V = vocab_size
    consts = {
        "one_i64": np.array(1, np.int64), "zero_i64": np.array(0, np.int64),
        "vocab_i64": np.array(V, np.int64), "last_i64": np.array([V - 1], np.int64),
        "axis1": np.array([1], np.int64), "k_all": np.array([V], np.int64),
        "onehot_values": np.array([0.0, 1.0], np.float32),
        "positions": np.arange(V, dtype=np.int64)[None, :], "true": np.array(True),
    }
    initializers = [numpy_helper.from_array(v, name) for name, v in consts.items()]
    initializers += list(step.graph.initializer)

    n = helper.make_node
    # top-k, then top-p, on the weights sorted in decreasing order; only run when asked for
    filter_nodes = [
        n("TopK", ["w", "k_all"], ["sorted", "sorted_idx"], axis=1, largest=1, sorted=1),
        n("Less", ["positions", "k_col"], ["in_k"]),
        n("Cast", ["in_k"], ["in_k_f"], to=TensorProto.DOUBLE),
        n("Mul", ["sorted", "in_k_f"], ["sorted_k"]),
        n("ReduceSum", ["sorted_k", "axis1"], ["sorted_sum"], keepdims=1),
        n("Div", ["sorted_k", "sorted_sum"], ["sorted_p"]),
        n("CumSum", ["sorted_p", "one_i64"], ["cum"]),
        n("Sub", ["cum", "sorted_p"], ["mass_before"]),
        n("Less", ["mass_before", "p_col"], ["in_p"]),
        n("And", ["in_p", "in_k"], ["kept"]),
        n("Cast", ["kept"], ["kept_i"], to=TensorProto.INT64),
        n("ReduceSum", ["kept_i", "axis1"], ["n_kept"], keepdims=1),
        n("Sub", ["n_kept", "one_i64"], ["last_kept"]),
        n("GatherElements", ["sorted", "last_kept"], ["threshold"], axis=1),
        n("GreaterOrEqual", ["w", "threshold"], ["allowed"]),
        n("Cast", ["allowed"], ["allowed_f"], to=TensorProto.DOUBLE),
        n("Mul", ["w", "allowed_f"], ["w_filtered"]),
    ]
    f64_rows = helper.make_tensor_value_info("w_out", TensorProto.DOUBLE, ["B", V])
    filtered = helper.make_graph(filter_nodes + [n("Identity", ["w_filtered"], ["w_out"])],
                                 "filtered", [], [f64_rows])
    unfiltered = helper.make_graph([n("Identity", ["w"], ["w_out"])], "unfiltered", [], [f64_rows])
    body = [
        # temperature: w = (p / max p) ** (1/T); zeros stay zero and 1/T = inf leaves only the argmax
        n("Cast", ["probs_in"], ["p"], to=TensorProto.DOUBLE),
        n("ReduceMax", ["p"], ["p_max"], axes=[1], keepdims=1),
        n("Div", ["p", "p_max"], ["q"]),
        n("Pow", ["q", "inv_t_col"], ["w"]),
        n("If", ["use_filter"], ["w_kept"], then_branch=filtered, else_branch=unfiltered),
        # inverse CDF with this iteration's uniform: the first index where cdf > u * cdf[-1]
        n("CumSum", ["w_kept", "one_i64"], ["cdf"]),
        n("Gather", ["cdf", "last_i64"], ["total"], axis=1),
        n("Gather", ["uniforms", "i"], ["u"], axis=0),
        n("Unsqueeze", ["u", "axis1"], ["u_col"]),
        n("Mul", ["u_col", "total"], ["target"]),
        n("Greater", ["cdf", "target"], ["above"]),
        n("Cast", ["above"], ["above_i"], to=TensorProto.INT32),
        n("ArgMax", ["above_i"], ["id"], axis=1, keepdims=0, select_last_index=0),
        # feed the drawn character back: one-hot [B, 1, V] into model.onnx's own nodes
        n("OneHot", ["id", "vocab_i64", "onehot_values"], ["id_onehot"], axis=-1),
        n("Unsqueeze", ["id_onehot", "axis1"], [f"step/{input_name}"]),
        n("Identity", ["cond_in"], ["cond_out"]),
        n("Identity", ["id"], ["id_scan"]),
    ]
    # model.onnx's nodes, their names prefixed so they cannot clash with the outer graph's
    produced = {out for node in step.graph.node for out in node.output} | {input_name}
    rename = {name: f"step/{name}" for name in produced}
    rename.update({s.input: f"{s.input}_in" for s in states})
    for node in step.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[:] = [rename.get(name, name) for name in node.input]
        copy.output[:] = [rename[name] for name in node.output]
        body.append(copy)
    body.append(n("Identity", [rename[probs_name]], ["probs_next"]))
    for s in states:
        body.append(n("Identity", [rename[s.output]], [f"{s.input}_next"]))

    f32 = TensorProto.FLOAT
    state_vi = lambda name, s: helper.make_tensor_value_info(name, f32, ["B", s.size])  # noqa: E731
    body_graph = helper.make_graph(
        body, "sample_and_step",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("probs_in", f32, ["B", V])]
        + [state_vi(f"{s.input}_in", s) for s in states],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("probs_next", f32, ["B", V])]
        + [state_vi(f"{s.input}_next", s) for s in states]
        + [helper.make_tensor_value_info("id_scan", TensorProto.INT64, ["B"])],
    )
    outer = [
        n("Unsqueeze", ["inv_temperature", "axis1"], ["inv_t_col"]),
        n("Equal", ["top_k", "zero_i64"], ["k_off"]),
        n("Min", ["top_k", "vocab_i64"], ["k_capped"]),
        n("Where", ["k_off", "vocab_i64", "k_capped"], ["k"]),
        n("Unsqueeze", ["k", "axis1"], ["k_col"]),
        n("Unsqueeze", ["top_p", "axis1"], ["p_col"]),
        n("Shape", ["uniforms"], ["uniforms_shape"]),
        n("Gather", ["uniforms_shape", "zero_i64"], ["steps"], axis=0),
        n("Loop", ["steps", "true", "probs"] + [s.input for s in states],
          ["probs_out"] + [s.output for s in states] + ["ids"], body=body_graph),
    ]
    graph = helper.make_graph(
        outer, "sampler",
        [helper.make_tensor_value_info("probs", f32, ["B", V])]
        + [state_vi(s.input, s) for s in states]
        + [helper.make_tensor_value_info("uniforms", TensorProto.DOUBLE, ["K", "B"]),
           helper.make_tensor_value_info("inv_temperature", TensorProto.DOUBLE, ["B"]),
           helper.make_tensor_value_info("top_k", TensorProto.INT64, ["B"]),
           helper.make_tensor_value_info("top_p", TensorProto.DOUBLE, ["B"]),
           helper.make_tensor_value_info("use_filter", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("probs_out", f32, ["B", V])]
        + [state_vi(s.output, s) for s in states]
        + [helper.make_tensor_value_info("ids", TensorProto.INT64, ["K", "B"])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="charsdk")
    model.ir_version = step.ir_version
    onnx.checker.check_model(model)
    return model

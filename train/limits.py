"""What one generated character costs, part by part: the profile behind `make bench`'s speed figures.

onnxruntime's own profiler adds microseconds to every kernel, more than most kernels take here, so
the parts are timed by difference instead: ONNX Loops of the sampler's shapes whose bodies hold only
the part in question, run in the same way the sampler runs. Parts: the loop iteration itself, one small
kernel (an elementwise op over [B, units]), and each weight matrix product of the model at its
real size, in float32 and with int8 weights (two ways: onnxruntime's fused DynamicQuantizeMatMul, and
the standard DynamicQuantizeLinear + MatMulInteger that other ONNX runtimes also run). They are set against
the sampler's own time per step (the stateful loop without top-k/top-p) and the number of kernels its
loop body holds. A limit line: the multiply-adds per second of one large product in float32 and in int8
on this machine, and the characters per second that would allow this model if products were all it did.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from charsdk import Generator
from charsdk.generator import session_options

from .sampler_graph import _cell_weights

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
SMALL_KERNELS = 10  # chained elementwise kernels timed against one
LARGE = (256, 1024, 4096)  # batch, in, out of the product behind the limit line


def multiply_adds_per_step(generator: Generator) -> int:
    """LSTM gates (4 x units x (inputs + units)) per layer plus the softmax layer."""
    sizes = [s.size for s in generator.vocab.states[::2]]
    inputs = [generator.vocab.size] + sizes[:-1]
    return sum(4 * u * (i + u) for u, i in zip(sizes, inputs, strict=True)) + sizes[-1] * generator.vocab.size


def _session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                providers=["CPUExecutionProvider"])


def median_rates(jobs: list[tuple[str, Callable[[], object], int]], repeats: int) -> list[tuple[str, float]]:
    """Median characters/second of each (name, run, chars), the jobs taking turns round by round: a
    shared machine's speed drifts over minutes, and turns give every row the same minutes."""
    for _, run, _ in jobs:
        run()  # warm-up
    times: dict[str, list[float]] = {name: [] for name, _, _ in jobs}
    for _ in range(repeats):
        for name, run, _ in jobs:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return [(name, chars / statistics.median(times[name])) for name, _, chars in jobs]


def _loop(body_nodes, carried: list[tuple[str, int]], weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A Loop of `steps` iterations over `body_nodes`, which map each carried "<name>_in" [B, width]
    to "<name>_out"."""
    info = lambda name, width: helper.make_tensor_value_info(name, F32, ["B", width])  # noqa: E731
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond", BOOL, []),
         *[info(f"{n}_in", w) for n, w in carried]],
        [helper.make_tensor_value_info("cond", BOOL, []), *[info(f"{n}_out", w) for n, w in carried]])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "true", *[n for n, _ in carried]],
                          [f"{n}_final" for n, _ in carried], body=body)],
        "profile",
        [helper.make_tensor_value_info("steps", I64, []), *[info(n, w) for n, w in carried]],
        [info(f"{n}_final", w) for n, w in carried],
        initializer=[numpy_helper.from_array(np.array(True), "true"),
                     *[numpy_helper.from_array(v, k) for k, v in weights.items()]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def _elementwise(count: int, units: int) -> onnx.ModelProto:
    names = ["h_in", *[f"t{k}" for k in range(count - 1)], "h_out"]
    return _loop([helper.make_node("Tanh", [a], [b]) for a, b in itertools.pairwise(names)],
                 [("h", units)], {})


PRECISIONS = ("fp32", "int8 DynamicQuantizeMatMul", "int8 DynamicQuantizeLinear+MatMulInteger")


def quantize_per_channel(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 weights [in, out] with one float32 scale per output channel."""
    scale = np.maximum(np.abs(weights).max(axis=0), 1e-30) / 127
    return np.round(weights / scale).clip(-127, 127).astype(np.int8), scale.astype(np.float32)


def _product(weights: np.ndarray, precision: str = "fp32") -> onnx.ModelProto:
    """x [B, in] @ W [in, out], and x carried on unchanged: the body is the product alone, in float32
    (one Gemm), or with int8 weights and x quantized on the fly: onnxruntime's fused contrib op, or the
    standard ops any ONNX runtime has (quantize x, integer product, back to float, scale)."""
    n_in, n_out = weights.shape
    node = helper.make_node
    if precision == "fp32":
        product, arrays = [node("Gemm", ["x_in", "w"], ["y_out"])], {"w": weights}
    else:
        q, scale = quantize_per_channel(weights)
        arrays = {"w_q": q, "w_scale": scale, "w_zero": np.zeros(n_out, np.int8)}
        if precision == PRECISIONS[1]:
            product = [node("DynamicQuantizeMatMul", ["x_in", "w_q", "w_scale", "w_zero"], ["y_out"],
                            domain="com.microsoft")]
        else:
            product = [node("DynamicQuantizeLinear", ["x_in"], ["x_q", "x_scale", "x_zero"]),
                       node("MatMulInteger", ["x_q", "w_q", "x_zero", "w_zero"], ["y_int"]),
                       node("Cast", ["y_int"], ["y_float"], to=F32),
                       node("Mul", ["x_scale", "w_scale"], ["y_scale"]),
                       node("Mul", ["y_float", "y_scale"], ["y_out"])]
    return _loop([*product, node("Identity", ["x_in"], ["x_out"])], [("x", n_in), ("y", n_out)], arrays)


def _per_step_us(run, steps: int, repeats: int) -> float:
    [(_, steps_per_s)] = median_rates([("", run, steps)], repeats)
    return 1e6 / steps_per_s


def _loop_us(model: onnx.ModelProto, batch: int, threads: int, steps: int, repeats: int) -> float:
    session = _session(model, threads)
    feed = {i.name: np.full((batch, i.shape[1]), 0.1, np.float32) for i in session.get_inputs()
            if i.name != "steps"}
    feed["steps"] = np.array(steps, np.int64)
    return _per_step_us(lambda: session.run(None, feed), steps, repeats)


def _plain_stateful_body(sampler: onnx.ModelProto) -> onnx.GraphProto:
    """The body of the Loop in the If branch that sampler_graph names "plain"."""
    (loop,) = next(g for g in _subgraphs(sampler.graph) if g.name == "plain").node
    return next(a.g for a in loop.attribute if a.name == "body")


def _subgraphs(graph: onnx.GraphProto):
    yield graph
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                yield from _subgraphs(a.g)


def profile(generator: Generator, batch: int, threads: int, repeats: int = 7) -> dict:
    """Microseconds per step (one character for each of `batch` streams) of each part."""
    vocab = generator.vocab
    steps = max(40, 3000 // batch)
    step_model = onnx.load(str(generator.path / vocab.onnx_file))
    sampler = onnx.load(str(generator.path / vocab.sampler_file))
    layers, (dense_w, _) = _cell_weights(step_model, vocab.size)
    matrices = {f"layer {k} recurrent {r.shape[0]}x{r.shape[1]}": r for k, (_, _, r) in enumerate(layers)}
    matrices |= {f"layer {k} input {w.shape[0]}x{w.shape[1]}": w for k, (w, _, _) in enumerate(layers) if k}
    matrices[f"dense {dense_w.shape[0]}x{dense_w.shape[1]}"] = dense_w
    units = layers[0][2].shape[0]

    one = _loop_us(_elementwise(1, units), batch, threads, steps, repeats)
    many = _loop_us(_elementwise(1 + SMALL_KERNELS, units), batch, threads, steps, repeats)
    kernel = (many - one) / SMALL_KERNELS
    loop = one - kernel
    products = {name: _loop_us(_product(w), batch, threads, steps, repeats) - loop
                for name, w in matrices.items()}
    int8_products = {precision: {name: _loop_us(_product(w, precision), batch, threads, steps, repeats) - loop
                                 for name, w in matrices.items()} for precision in PRECISIONS[1:]}
    body = _plain_stateful_body(sampler)
    others = len(body.node) - sum(n.op_type in ("Gemm", "MatMul") for n in body.node)

    uniforms = np.random.default_rng(0).random((batch, steps, vocab.size), dtype=np.float32)
    session = generator.sampler if threads == 1 else _session(sampler, threads)
    feed = {"logits": np.zeros((batch, vocab.size), np.float32), "uniforms": uniforms,
            "temperature": np.full(batch, 0.5, np.float32),
            "top_k": np.zeros(batch, np.int64), "top_p": np.ones(batch, np.float32),
            "use_filter": np.array(False), "window": np.array(0, np.int64), "start": np.array(0, np.int64),
            **{s.input: np.zeros((batch, s.size), np.float32) for s in vocab.states}}
    measured = _per_step_us(lambda: session.run(["ids"], feed), steps, repeats)
    accounted = loop + sum(products.values()) + others * kernel
    return {"batch": batch, "threads": threads, "sampler_us_per_step": measured,
            "kernels_per_step": len(body.node), "loop_iteration_us": loop, "small_kernel_us": kernel,
            "matrix_products_us": products, "int8_matrix_products_us": int8_products,
            "other_kernels": others, "accounted_us": accounted}


def limit_line(generator: Generator, threads: int, repeats: int = 5) -> dict:
    """Multiply-adds per second of one large product (LARGE) in each precision, and what that allows:
    characters per second of this model if its weight products ran at that rate and nothing else cost."""
    batch, n_in, n_out = LARGE
    weights = np.random.default_rng(0).standard_normal((n_in, n_out)).astype(np.float32)
    loop = _loop_us(_elementwise(1, n_in), batch, threads, 20, repeats)
    per_char = multiply_adds_per_step(generator)
    seconds = {p: (_loop_us(_product(weights, p), batch, threads, 20, repeats) - loop) * 1e-6
               for p in PRECISIONS}
    rates = {p: batch * n_in * n_out / s for p, s in seconds.items()}
    return {"threads": threads, "shape": LARGE, "macs_per_char": per_char, "macs_per_s": rates,
            "chars_per_s_allowed": {p: r / per_char for p, r in rates.items()}}


def describe(p: dict) -> list[str]:
    products = " + ".join(f"{name} {us:.2f}" for name, us in p["matrix_products_us"].items())
    streams, measured = p["batch"], p["sampler_us_per_step"]
    int8 = [f"  int8 weights, {precision}: " + " + ".join(f"{us:.2f}" for us in times.values()) + " µs"
            for precision, times in p["int8_matrix_products_us"].items()]
    return [
        f"B={streams}, {p['threads']} thread(s): the sampler takes {measured:.1f} µs per step "
        f"({streams * 1e6 / measured:,.0f} chars/s), {p['kernels_per_step']} kernels per step",
        f"  loop iteration {p['loop_iteration_us']:.2f} µs; matrix products: {products} µs;",
        f"  {p['other_kernels']} other kernels x {p['small_kernel_us']:.2f} µs (one elementwise op over "
        f"[{streams}, units]); these parts add up to {p['accounted_us']:.1f} µs "
        f"({streams * 1e6 / p['accounted_us']:,.0f} chars/s)",
        *int8,
    ]


def describe_limit(line: dict) -> list[str]:
    batch, n_in, n_out = line["shape"]
    return [f"limit line, {line['threads']} thread(s), one [{batch}, {n_in}] x [{n_in}, {n_out}] product: "
            f"{line['macs_per_char']:,} multiply-adds per character of this model"] + [
        f"  {p}: {rate / 1e9:.1f} G multiply-adds/s, at most {line['chars_per_s_allowed'][p]:,.0f} chars/s"
        for p, rate in line["macs_per_s"].items()]

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
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from charsdk import Generator
from charsdk.session import session_options
from train import graph

F32, I64, BOOL = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
SMALL_KERNELS = 10  # chained elementwise kernels timed against one
LARGE = (256, 1024, 4096)  # batch, in, out of the product behind the limit line


def multiply_adds_per_step(generator: Generator) -> int:
    """LSTM gates (4 x units x (inputs + units)) per layer plus the softmax layer."""
    sizes = [s.size for s in generator.vocab.states[::2]]
    inputs = [generator.vocab.size] + sizes[:-1]
    return sum(4 * u * (i + u) for u, i in zip(sizes, inputs, strict=True)) + sizes[-1] * generator.vocab.size


def loop_session(model: onnx.ModelProto, threads: int) -> ort.InferenceSession:
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


def _loop(body_nodes, carried: list[tuple[str, int]], weights: dict[str, np.ndarray],
          outer=()) -> onnx.ModelProto:
    """A Loop of `steps` iterations over `body_nodes`, which map each carried "<name>_in" [B, width]
    to "<name>_out"; `outer` nodes run once before it."""
    info = lambda name, width: helper.make_tensor_value_info(name, F32, ["B", width])  # noqa: E731
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", I64, []), helper.make_tensor_value_info("cond", BOOL, []),
         *[info(f"{n}_in", w) for n, w in carried]],
        [helper.make_tensor_value_info("cond", BOOL, []), *[info(f"{n}_out", w) for n, w in carried]])
    graph = helper.make_graph(
        [*outer, helper.make_node("Loop", ["steps", "true", *[n for n, _ in carried]],
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


# The model's own forms (train.graph.product: float32 Gemm; int8 weights with the input quantized at a
# fixed scale, QuantizeLinear then MatMulInteger) and onnxruntime's fused contrib op, which quantizes
# the input at a scale measured per call (not portable, and it ties streams together).
PRECISIONS = ("fp32", "int8 QuantizeLinear+MatMulInteger (model.onnx)", "int8 DynamicQuantizeMatMul")


def product_loop(weights: np.ndarray, precision: str = "fp32") -> onnx.ModelProto:
    """x [B, in] @ W [in, out], and x carried on unchanged: the body is the product alone."""
    n_in, n_out = weights.shape
    node = helper.make_node
    zero_bias = {"b": np.zeros(n_out, np.float32)}
    outer = []
    if precision == PRECISIONS[0]:
        product, arrays = graph.product("x_in", "w", "b", "y_out", "fp32"), {"w": weights, **zero_bias}
    else:
        q, scale = graph.quantize_per_channel(weights, graph.PAIR_LIMIT)
        arrays = {"w_q": q, "w_scale": scale, "w_zero": np.zeros(n_out, np.int8)}
        if precision == PRECISIONS[1]:
            arrays |= {"act_scale": np.array(graph.ACTIVATION_SCALE, np.float32),
                       "act_zero": np.array(128, np.uint8), "one_i64": np.array(1, np.int64), **zero_bias}
            outer = graph.runtime_scale_nodes("steps")
            product = [graph.quantize("x_in", "x_q"), *graph.product("x_q", "w", "b", "y_out", "int8")]
        else:
            product = [node("DynamicQuantizeMatMul", ["x_in", "w_q", "w_scale", "w_zero"], ["y_out"],
                            domain="com.microsoft")]
    body = [*product, node("Identity", ["x_in"], ["x_out"])]
    return _loop(body, [("x", n_in), ("y", n_out)], arrays, outer)


def _per_step_us(run, steps: int, repeats: int) -> float:
    [(_, steps_per_s)] = median_rates([("", run, steps)], repeats)
    return 1e6 / steps_per_s


def _loop_us(model: onnx.ModelProto, batch: int, threads: int, steps: int, repeats: int) -> float:
    session = loop_session(model, threads)
    feed = {i.name: np.full((batch, i.shape[1]), 0.1, np.float32) for i in session.get_inputs()
            if i.name != "steps"}
    feed["steps"] = np.array(steps, np.int64)
    return _per_step_us(lambda: session.run(None, feed), steps, repeats)


def kernels_per_step(generator: Generator) -> int:
    """Kernels per step of the Scan that draws in stateful mode without top-k / top-p (train/graph.py),
    after onnxruntime's fusions: the graph as onnxruntime runs it."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(1)
        options.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(generator.path / generator.vocab.onnx_file), options,
                             providers=["CPUExecutionProvider"])
        model = onnx.load(options.optimized_model_filepath)
    bodies = [a.g for n in model.graph.node for a in n.attribute if a.name == "body"]
    return len(next(b for b in bodies if b.name == graph.body_name("draw", ring=False)).node)


def model_matrices(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Each weight matrix of model.onnx that a step multiplies by, as float32 [in, out], named by its role."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found = {}
    for name in sorted(n for n in arrays if n.endswith(("recurrent", "stacked", "dense",
                                                         "recurrent_q", "stacked_q", "dense_q"))):
        base = name.removesuffix("_q")
        value = arrays[name] * arrays[f"{base}_scale"] if name.endswith("_q") else arrays[name]
        kind = "recurrent" if base.endswith("recurrent") else "input+recurrent"
        role = "dense" if base == "dense" else f"layer {base[1:base.index('_')]} {kind}"
        found[f"{role} {value.shape[0]}x{value.shape[1]}"] = value.astype(np.float32)
    return dict(sorted(found.items(), key=lambda item: item[0].startswith("dense")))


def profile(generator: Generator, batch: int, threads: int, repeats: int = 7) -> dict:
    """Microseconds per step (one character for each of `batch` streams) of each part."""
    from charsdk.sampling import SamplingOptions

    vocab = generator.vocab
    steps = max(40, 3000 // batch)
    model = onnx.load(str(generator.path / vocab.onnx_file))
    matrices = model_matrices(model)
    units = vocab.states[0].size

    one = _loop_us(_elementwise(1, units), batch, threads, steps, repeats)
    many = _loop_us(_elementwise(1 + SMALL_KERNELS, units), batch, threads, steps, repeats)
    kernel = (many - one) / SMALL_KERNELS
    loop = one - kernel
    products = {precision: {name: _loop_us(product_loop(w, precision), batch, threads, steps, repeats) - loop
                            for name, w in matrices.items()} for precision in PRECISIONS}
    others = kernels_per_step(generator) - len(matrices)
    counted = Generator.load(generator.path, threads=threads)

    uniforms = np.random.default_rng(0).random((batch, steps, vocab.size), dtype=np.float32)
    options = [SamplingOptions(0.5)] * batch
    no_ids = np.zeros((batch, 0), np.int64)
    logits = np.zeros((batch, vocab.size), np.float32)
    state = counted.backend.zero_state(batch)
    step = counted.backend.run
    measured = _per_step_us(lambda: step(no_ids, state, logits, uniforms, options), steps, repeats)
    own = products[vocab.precision if vocab.precision == "fp32" else PRECISIONS[1]]
    accounted = loop + sum(own.values()) + others * kernel
    return {"batch": batch, "threads": threads, "precision": vocab.precision, "sampler_us_per_step": measured,
            "kernels_per_step": others + len(matrices), "loop_iteration_us": loop, "small_kernel_us": kernel,
            "matrix_products_us": products, "other_kernels": others, "accounted_us": accounted}


def limit_line(generator: Generator, threads: int, repeats: int = 5) -> dict:
    """Multiply-adds per second of one large product (LARGE) in each precision, and what that allows:
    characters per second of this model if its weight products ran at that rate and nothing else cost."""
    batch, n_in, n_out = LARGE
    weights = np.random.default_rng(0).standard_normal((n_in, n_out)).astype(np.float32)
    loop = _loop_us(_elementwise(1, n_in), batch, threads, 20, repeats)
    per_char = multiply_adds_per_step(generator)
    seconds = {p: (_loop_us(product_loop(weights, p), batch, threads, 20, repeats) - loop) * 1e-6
               for p in PRECISIONS}
    rates = {p: batch * n_in * n_out / s for p, s in seconds.items()}
    return {"threads": threads, "shape": LARGE, "macs_per_char": per_char, "macs_per_s": rates,
            "chars_per_s_allowed": {p: r / per_char for p, r in rates.items()}}


def describe(p: dict) -> list[str]:
    streams, measured = p["batch"], p["sampler_us_per_step"]
    lines = [
        f"B={streams}, {p['threads']} thread(s), {p['precision']} model: one call of model.onnx takes "
        f"{measured:.1f} µs per step ({streams * 1e6 / measured:,.0f} chars/s), {p['kernels_per_step']} "
        "kernels per step",
        f"  loop iteration {p['loop_iteration_us']:.2f} µs; {p['other_kernels']} kernels besides the "
        f"products x {p['small_kernel_us']:.2f} µs (one elementwise op over [{streams}, units]); "
        f"these parts and the model's own products add up to {p['accounted_us']:.1f} µs "
        f"({streams * 1e6 / p['accounted_us']:,.0f} chars/s)",
    ]
    for precision, times in p["matrix_products_us"].items():
        parts = " + ".join(f"{name} {us:.2f}" for name, us in times.items())
        lines.append(f"  products, {precision}: {parts} µs")
    return lines


def describe_limit(line: dict) -> list[str]:
    batch, n_in, n_out = line["shape"]
    return [f"limit line, {line['threads']} thread(s), one [{batch}, {n_in}] x [{n_in}, {n_out}] product: "
            f"{line['macs_per_char']:,} multiply-adds per character of this model"] + [
        f"  {p}: {rate / 1e9:.1f} G multiply-adds/s, at most {line['chars_per_s_allowed'][p]:,.0f} chars/s"
        for p, rate in line["macs_per_s"].items()]

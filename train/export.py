"""Export the best checkpoint: `python -m train.export --name NAME` writes model-<hash>.onnx,
sampler-<hash>.onnx and vocab.json (which names both, with their sha256).

The ONNX graph takes one-hot x [batch, time, vocab] and the LSTM state, and returns the
next-character distribution after the last step and the new state. Before anything is moved into
place, onnxruntime (through charsdk, as users run it) must agree with Keras on real windows.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import keras
import numpy as np
import onnx
import tf2onnx

from charsdk import Generator, ModelError
from charsdk.generator import sha256_of
from charsdk.sampling import SamplingOptions, allowed, gumbel_noise, scores
from charsdk.vocab import Vocab

from .corpus import CorpusError, load_corpus
from .model import inference_function, last_step_probs
from .sampler_graph import build_sampler

OPSET = 17
TOLERANCE = 1e-5  # max abs difference of probabilities between Keras and onnxruntime
# Held-out characters scored for vocab.json's figures, at most (the first ones of the held-out part):
# window mode reruns maxlen steps per character, ~11x the work of stateful mode.
HOLDOUT_CHARS = {"stateful": 1_000_000, "window": 100_000}


class ExportError(Exception):
    pass


def export(model_dir: Path, opset: int = OPSET) -> dict:
    """Convert model_dir/best.keras; returns the parity figures. Raises ExportError on mismatch."""
    log = json.loads((model_dir / "log.json").read_text())
    recipe, corpus_info = log["recipe"], log["corpus"]
    try:
        corpus = load_corpus(corpus_info["path"], maxlen=recipe["maxlen"], holdout=recipe["holdout"],
                             lowercase=recipe["lowercase"], cache_dir=model_dir)
    except CorpusError as exc:
        raise ExportError(f"the training corpus is needed to check the export: {exc}") from None
    if corpus.sha256 != corpus_info["sha256"]:
        raise ExportError(f"{corpus.path} changed since training (sha256 differs): retrain")

    model = keras.models.load_model(model_dir / "best.keras")
    step, states = inference_function(model)
    staging = model_dir / ".export-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    step_proto, _ = tf2onnx.convert.from_function(
        step, input_signature=step.input_signature, opset=opset)
    onnx_path, onnx_sha256 = save_content_addressed(step_proto, staging, "model")
    sampler_path, sampler_sha256 = save_content_addressed(
        build_sampler(step_proto, len(corpus.chars), states), staging, "sampler")

    best = log["epochs"][log["best_epoch"] - 1]
    holdout_text = corpus.decode(corpus.holdout_ids[: max(HOLDOUT_CHARS.values())])
    seed_start = holdout_text.find(" ") + 1
    vocab = Vocab(
        chars=corpus.chars,
        maxlen=recipe["maxlen"],
        lowercase=recipe["lowercase"],
        states=states,
        onnx_file=onnx_path.name,
        onnx_sha256=onnx_sha256,
        sampler_file=sampler_path.name,
        sampler_sha256=sampler_sha256,
        default_seed_text=holdout_text[seed_start : seed_start + recipe["maxlen"]],
        training={
            "recipe_name": log["recipe_name"],
            "recipe": recipe,
            "corpus_sha256": corpus.sha256,
            "corpus_chars": len(corpus.ids),
            "epochs_trained": len(log["epochs"]),
            "best_epoch": log["best_epoch"],
            "holdout_bits_per_char_during_training": round(best["val_bits_per_char"], 4),
            "train_wall_s": best["wall_s"],
            "parameters": int(model.count_params()),
            "checkpoint_sha256": sha256_of(model_dir / "best.keras"),
            "opset": opset,
        },
    )
    vocab.save(staging / "vocab.json")

    try:
        generator = Generator.load(staging, threads=os.cpu_count())
        parity = check_parity(model, generator, corpus)
        if parity["max_abs_diff"] > TOLERANCE:
            raise ExportError(f"onnxruntime and Keras disagree by {parity['max_abs_diff']:.2e} "
                              f"(> {TOLERANCE}): the export is wrong and was not installed")
        if parity["sampler_mismatches"]:
            raise ExportError(f"sampler.onnx drew {parity['sampler_mismatches']} characters that "
                              "numpy sampling did not: the export is wrong and was not installed")
        # The figures users can reproduce with `charsdk eval` on the start of the held-out text.
        for mode, limit in HOLDOUT_CHARS.items():
            result = generator.evaluate(holdout_text[:limit], mode=mode)
            vocab.training[f"holdout_bits_per_char_{mode}"] = round(result["bits_per_char"], 4)
            vocab.training[f"holdout_chars_{mode}"] = len(holdout_text[:limit])
        vocab.save(staging / "vocab.json")
        install(staging, model_dir, keep={onnx_path.name, sampler_path.name})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return parity


def save_content_addressed(proto, directory: Path, stem: str) -> tuple[Path, str]:
    """Save as <stem>-<sha256 prefix>.onnx (a new export never overwrites a file in use);
    returns the path and the full sha256."""
    tmp = directory / f"{stem}.onnx"
    onnx.save(proto, tmp)
    sha256 = sha256_of(tmp)
    path = directory / f"{stem}-{sha256[:12]}.onnx"
    os.replace(tmp, path)
    return path, sha256


def install(staging: Path, model_dir: Path, keep: set[str]) -> None:
    """Move a checked export into place so that a kill at any moment leaves the previous complete
    model or the new one, never a mix: the new ONNX files arrive beside the old ones under their own
    names, vocab.json (which names them) is replaced in one rename, and only then are the files
    it no longer names removed."""
    remove_unnamed_onnx(model_dir)  # left by an export killed before, if any
    for name in keep:
        os.replace(staging / name, model_dir / name)
    os.replace(staging / "vocab.json", model_dir / "vocab.json")
    remove_unnamed_onnx(model_dir)


def remove_unnamed_onnx(model_dir: Path) -> None:
    """Delete the ONNX files that model_dir/vocab.json does not name."""
    try:
        vocab = Vocab.load(model_dir / "vocab.json")
    except ModelError:
        return  # no readable vocab.json: nothing is known to be unused
    for path in model_dir.glob("*.onnx"):
        if path.name not in (vocab.onnx_file, vocab.sampler_file):
            path.unlink()


def check_parity(model, generator: Generator, corpus, windows: int = 64, stepped: int = 4) -> dict:
    """Keras vs onnxruntime on held-out windows: whole window from a zero state, and step by step."""
    maxlen, vocab = generator.vocab.maxlen, generator.vocab
    holdout = corpus.holdout_ids
    starts = np.linspace(0, len(holdout) - maxlen - 1, windows).astype(int)
    x = np.stack([vocab.one_hot(holdout[s : s + maxlen])[0] for s in starts])
    keras_probs = last_step_probs(model, x)
    (onnx_probs,) = generator.model.run(
        [vocab.probs_name], {vocab.input_name: x, **generator._zero_state(len(x))}
    )
    whole = float(np.abs(onnx_probs - keras_probs).max())

    stepwise = 0.0
    for row in range(stepped):
        state = generator._zero_state(1)
        for t in range(maxlen):
            probs, state = generator._run(x[row : row + 1, t : t + 1], state)
        stepwise = max(stepwise, float(np.abs(probs - keras_probs[row]).max()))
    return {"window_max_abs_diff": whole, "step_max_abs_diff": stepwise,
            "max_abs_diff": max(whole, stepwise),
            "sampler_mismatches": sampler_mismatches(generator, holdout[:maxlen])}


def sampler_mismatches(generator: Generator, seed_ids, length: int = 200) -> int:
    """Characters drawn by sampler.onnx, in both modes, that numpy's draw (float64, from model.onnx's
    distribution given the same characters) would not draw with the same uniform numbers, for several
    temperature / top-k / top-p settings at once."""
    options = [SamplingOptions.check(t, k, p) for t, k, p in
               [(0, 0, 1), (0.5, 0, 1), (1.0, 5, 1), (1.2, 0, 0.9), (0.8, 3, 0.5)]]
    inv_t = np.array([o.inv_temperature for o in options])
    top_k = np.array([o.top_k for o in options])
    top_p = np.array([o.top_p for o in options])
    uniforms = np.random.default_rng(0).random((len(options), length, generator.vocab.size), np.float32)
    noise = gumbel_noise(uniforms, [o.temperature for o in options])
    seed_ids, maxlen, rows = np.asarray(seed_ids), generator.vocab.maxlen, np.arange(len(options))
    mismatches = 0
    for steps in (generator._stateful_ids, generator._window_ids):
        (drawn,) = steps(seed_ids, options, [uniforms])
        texts = np.concatenate([np.tile(seed_ids, (len(options), 1)), drawn.T], axis=1)
        probs, state = generator._prime(seed_ids, len(options))
        for step in range(length):
            if steps == generator._window_ids:  # the book's loop: the last maxlen characters, zero state
                end = len(seed_ids) + step
                x = np.eye(generator.vocab.size, dtype=np.float32)[texts[:, max(end - maxlen, 0) : end]]
                probs, _ = generator._run(x, generator._zero_state(len(options)))
            numpy_scores = scores(probs, noise[:, step], allowed(probs, inv_t, top_k, top_p))
            ids = drawn[step]
            mismatches += int((numpy_scores[rows, ids] < numpy_scores.max(axis=1) - 1e-4).sum())
            if steps == generator._stateful_ids:
                probs, state = generator._run(generator.vocab.one_hot(ids)[0][:, None], state)
    return mismatches


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default="nietzsche")
    p.add_argument("--artifacts", default="artifacts")
    args = p.parse_args(argv)
    model_dir = Path(args.artifacts) / args.name
    if not (model_dir / "best.keras").exists() or not (model_dir / "log.json").exists():
        print(f"export: error: {model_dir} has no trained checkpoint: run make train NAME={args.name}",
              file=sys.stderr)
        return 2
    try:
        parity = export(model_dir)
    except ExportError as exc:
        print(f"export: error: {exc}", file=sys.stderr)
        return 1
    print(f"exported {model_dir}/vocab.json and the ONNX files it names; Keras vs onnxruntime max "
          f"abs difference: window {parity['window_max_abs_diff']:.1e}, step by step "
          f"{parity['step_max_abs_diff']:.1e}; sampler.onnx agrees with numpy sampling")
    return 0


if __name__ == "__main__":
    sys.exit(main())

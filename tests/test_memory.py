"""The n-gram memory (charsdk.memory): its counts are the text's, counted by hand; `make memory` on a real
trained run codes the held-out part better and records it; the mixture that draws each character is the
one that scores it; JavaScript draws, chooses, predicts and scores as Python does; a memory that does not
belong to its model is refused, and so is shipping one."""

import json
import shutil

import numpy as np
import pytest

from charsdk import Generator, ModelError
from charsdk.engine import Engine, stream_generators, uniforms
from charsdk.memory import BETA, ORDER, Memory, suffix_array
from charsdk.memory_backend import MemoryBackend
from charsdk.sampling import gumbel_noise
from tests.test_js import NEAR_TIE, needs_node, node


def counted_by_hand(text: np.ndarray, context: np.ndarray, size: int):
    """charsdk.memory's distribution, from counting substrings of the text one by one."""
    s, h = "".join(chr(65 + i) for i in text), "".join(chr(65 + i) for i in context)

    def count(x):
        return sum(s.startswith(x, i) for i in range(len(s) - len(x) + 1))

    q, depth = np.full(size, 1.0 / size), 0
    for k in range(min(ORDER, len(h)) + 1):
        tail = h[len(h) - k:]
        total = count(tail) - s.endswith(tail) if k else len(s)
        if total <= 0:
            break
        q = (np.array([count(tail + chr(65 + c)) for c in range(size)]) + BETA * q) / (total + BETA)
        depth = k
    return q, depth


def test_the_suffix_array_sorts_every_suffix():
    rng = np.random.default_rng(1)
    symbols = np.append(rng.integers(1, 4, 300), 0)
    assert suffix_array(symbols).tolist() == sorted(range(len(symbols)), key=lambda i: symbols[i:].tolist())


def test_the_memory_s_probabilities_are_the_text_s_counts():
    rng = np.random.default_rng(0)
    size, part = 5, rng.integers(0, 5, 300)
    text = np.concatenate([part, part[50:120], rng.integers(0, size, 200), part[10:90]])  # long repeats
    memory = Memory.build(text, size)
    read = np.concatenate([text[100:160], rng.integers(0, size, 40)])
    contexts = np.full((len(read), ORDER), -1)
    for t in range(1, len(read)):
        before = read[max(0, t - ORDER) : t]
        contexts[t, ORDER - len(before):] = before
    q, depth = memory.distributions(contexts)
    one, one_depth = memory.char_probs(read, 0)
    for t in range(len(read)):
        want, want_depth = counted_by_hand(text, read[max(0, t - ORDER) : t], size)
        assert depth[t] == one_depth[t] == want_depth
        np.testing.assert_allclose(q[t], want, rtol=1e-12)
        assert one[t] == pytest.approx(want[read[t]], rel=1e-12)
    assert set(depth) >= {0, ORDER}  # the empty context and the longest one were both reached


@pytest.fixture(scope="module")
def remembering(trained_dir, tmp_path_factory):
    """A copy of the tiny trained run, given its memory as `make memory` gives it."""
    from train.memory import main

    run = tmp_path_factory.mktemp("memory") / "tiny"
    shutil.copytree(trained_dir, run)
    assert main(["--name", "tiny", "--artifacts", str(run.parent)]) == 0
    return run


def test_make_memory_codes_the_held_out_part_better_and_records_what_it_did(remembering):
    from train.export import training_corpus

    generator = Generator.load(remembering)
    entry = generator.vocab.memory
    assert isinstance(generator.backend, MemoryBackend) and (remembering / entry["file"]).exists()
    figures = entry["holdout_bits_per_char"]
    assert figures["mixed"] < figures["model"] - 0.05 and figures["mixed_cross_fitted"] < figures["model"]
    assert entry["characters"] == training_corpus(remembering)[1].split and entry["order"] == ORDER
    _, corpus = training_corpus(remembering)
    held = "".join(np.array(corpus.chars)[corpus.holdout_ids])
    assert generator.evaluate(held)["bits_per_char"] == pytest.approx(figures["mixed"], abs=1e-4)


def test_charsdk_info_says_the_model_has_a_memory_and_what_it_gives(remembering):
    from typer.testing import CliRunner

    from charsdk.cli import app

    result = CliRunner().invoke(app, ["info", "--model", str(remembering)])
    figures = Generator.load(remembering).vocab.memory["holdout_bits_per_char"]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("memory")]
    assert result.exit_code == 0 and "n-gram counts of the training text" in line
    assert f"held-out {figures['mixed']:.4f} stateful bits/char with it" in line


def test_each_drawn_character_is_scored_by_the_mixture_that_scoring_a_text_gives(remembering):
    generator = Generator.load(remembering)
    seed_text = "The water "
    sample = generator.generate(seed_text, 60, temperature=0.8, seed=3, logprobs=1)
    ids = generator.vocab.encode(seed_text + sample.text)
    scored = Engine(generator.backend, "stateful").log_probs(ids, len(seed_text))
    drawn = np.array([s.logprob for s in sample.scores])
    np.testing.assert_allclose(drawn, scored, atol=1e-4)
    plain = Engine(generator.backend.model, "stateful").log_probs(ids, len(seed_text))
    assert np.abs(plain - scored).max() > 0.1  # the memory changed them


def test_greedy_text_follows_the_mixture_not_the_model_alone(remembering):
    generator = Generator.load(remembering)
    text = generator.generate("The ", 40, temperature=0)
    ids = generator.vocab.encode("The " + text)
    mixed = generator.backend.log_distributions(ids, "stateful", 4)
    assert (mixed.argmax(1) == ids[4:]).all()


def test_a_memory_that_does_not_belong_is_refused_and_make_ship_refuses_one(remembering, tmp_path):
    from train.ship import main as ship

    broken = tmp_path / "broken"
    shutil.copytree(remembering, broken)
    vocab = json.loads((broken / "vocab.json").read_text())
    (broken / vocab["memory"]["file"]).write_bytes(b"\0\0")
    with pytest.raises(ModelError, match="does not match the sha256"):
        Generator.load(broken)
    assert not isinstance(Generator.load(broken, memory=False).backend, MemoryBackend)  # the network alone
    shutil.copy2(remembering / vocab["memory"]["file"], broken / vocab["memory"]["file"])
    vocab["memory"]["order"] = ORDER + 8  # counted by another charsdk
    (broken / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelError, match=r"build it again \(make memory\), or load the model without it"):
        Generator.load(broken)
    vocab["memory"]["weights"][3] = 1.5
    (broken / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ModelError, match=r"'memory' must .* weights \(each in \[0, 1\)\)"):
        Generator.load(broken)
    assert ship([str(remembering), str(tmp_path / "models" / "mine")]) == 2
    assert not (tmp_path / "models").exists()


def test_make_memory_says_what_is_missing(remembering, tmp_path, capsys):
    from train.memory import main

    run = tmp_path / "exported"
    run.mkdir()
    assert main(["--name", "exported", "--artifacts", str(tmp_path)]) == 2
    assert "has no export: run make export NAME=exported" in capsys.readouterr().err
    shutil.copy2(remembering / "vocab.json", run / "vocab.json")
    assert main(["--name", "exported", "--artifacts", str(tmp_path)]) == 2
    assert "has no log.json: a memory is built from the run's own corpus" in capsys.readouterr().err


def departure_gap(generator, seed_text: str, options: dict, ours: str, theirs: str) -> float:
    """How much worse Python scores (log-probability plus Gumbel noise) the character the other runtime drew
    where one stream's texts first differ (tests/test_js.py's rule, over the mixture)."""
    k = next(i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b)
    backend = generator.backend
    log_p = backend.next_log_probs(backend.start([generator.vocab.encode(seed_text + ours[:k])], "stateful"))
    numbers = uniforms(stream_generators(options["seed"], 1), k + 1, generator.vocab.size)[:, k]
    score = log_p[0] + gumbel_noise(numbers, [options["temperature"]])[0]
    return float(score.max() - score[generator.vocab.chars.index(theirs[k])])


@needs_node
def test_javascript_draws_chooses_predicts_and_scores_as_python_does_with_a_memory(remembering):
    from train.export import training_corpus

    generator = Generator.load(remembering)
    _, corpus = training_corpus(remembering)
    held, trained = ("".join(np.array(corpus.chars)[part]) for part in (corpus.holdout_ids, corpus.train_ids))
    drawn = [("The water ", {"length": 120, "temperature": t, "seed": s}) for s in range(3) for t in (0.5, 1)]
    cases = [{"model": "tiny", "seedText": seed_text, "options": o} for seed_text, o in drawn] + [
        {"model": "tiny", "seedText": "The ",
         "options": {"choice": ["water", "time", "people"], "seed": 2, "temperature": 1.0, "logprobs": 1}},
        {"model": "tiny", "seedText": "The wat", "predict": True, "options": {"topK": 4}},
        {"model": "tiny", "seedText": held, "evaluate": True, "options": {}},
        {"model": "tiny", "contexts": [[], *(generator.vocab.encode(text[i : i + ORDER]).tolist()
                                             for text in (held, trained) for i in range(0, 3000, 100))]},
    ]
    got = node("node.mjs", str(remembering.parent), payload=cases)
    contexts = np.full((len(cases[-1]["contexts"]), ORDER), -1)
    for row, context in zip(contexts, cases[-1]["contexts"], strict=True):
        row[ORDER - len(context):] = context
    q, depth = generator.backend.memory.distributions(contexts)
    np.testing.assert_allclose([m["q"] for m in got[-1]["memory"]], q, rtol=1e-13)  # the same counts, exactly
    assert [m["depth"] for m in got[-1]["memory"]] == depth.tolist()  # training text's contexts: 16 deep
    got = got[:-1]
    for (seed_text, options), theirs in zip(drawn, got, strict=False):
        ours, text = generator.generate(seed_text, **options), theirs["text"]
        gap = 0 if ours == text else departure_gap(generator, seed_text, options, ours, text)
        assert gap < NEAR_TIE, (options, ours, text)
    assert sum(generator.generate(s, **o) == t["text"] for (s, o), t in zip(drawn, got, strict=False)) > 3
    choice = generator.generate("The ", choice=["water", "time", "people"], seed=2, temperature=1, logprobs=1)
    assert got[-3]["text"]["text"] == choice.text
    assert got[-3]["text"]["scores"][0]["logprob"] == pytest.approx(choice.scores[0].logprob, abs=1e-4)
    ours = generator.predict("The wat", top_k=4)
    assert [c for c, _ in got[-2]["predict"]] == list(ours)
    np.testing.assert_allclose([p for _, p in got[-2]["predict"]], list(ours.values()), atol=1e-4)
    bits = generator.evaluate(held)["bits_per_char"]
    assert got[-1]["evaluate"]["bits_per_char"] == pytest.approx(bits, abs=1e-3)
    alone = Generator.load(remembering, memory=False)
    assert abs(alone.evaluate(held)["bits_per_char"] - bits) > 0.05  # JavaScript's is the mixture's figure


def test_make_bench_memory_times_the_model_with_and_without_its_memory(remembering, tmp_path, capsys):
    from bench.memory import main

    assert main([str(remembering), "--out-dir", str(tmp_path), "--repeats", "1"]) == 0
    (written,) = tmp_path.glob("memory-tiny-*.json")
    rates = json.loads(written.read_text())["chars_per_s"]
    assert len(rates) == 8 and "CPU flags" in capsys.readouterr().out
    # one model call per character with the memory; the network alone draws many per call
    assert rates["with its memory: one stream"] < rates["the network alone: one stream"] / 2

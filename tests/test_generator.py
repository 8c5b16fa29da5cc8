import json
import threading

import numpy as np
import onnxruntime as ort
import pytest

from charsdk import Generator, InputError, ModelError
from charsdk.engine import draws
from charsdk.generator import default_model_dir
from charsdk.sampling import log_softmax
from charsdk.session import sha256_of
from tests.conftest import SHARED_CORPUS

MODES = ["stateful", "window"]


@pytest.fixture(scope="module")
def generator():
    return Generator.load()


def test_the_shipped_model_loads_and_generates(generator):
    assert generator.path == default_model_dir()
    text = generator.generate("the meaning of life is ", length=300, temperature=0.5, seed=0)
    assert len(text) == 300 and set(text) <= set(generator.vocab.chars)
    assert generator.vocab.training["holdout_bits_per_char_window"] < 2.6


def test_shipped_models_load_by_name_and_the_default_beats_the_book():
    book = Generator.load("nietzsche-book")
    assert book.vocab.training["recipe_name"] == "book"
    default = Generator.load("nietzsche")
    assert default.path == Generator.load().path
    figure = "holdout_bits_per_char_window"
    assert default.vocab.training[figure] < book.vocab.training[figure] - 0.1


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_same_seed_same_text(generator, mode):
    a = generator.generate("to be ", length=120, temperature=1.0, seed=42, mode=mode)
    assert a == generator.generate("to be ", length=120, temperature=1.0, seed=42, mode=mode)
    assert a != generator.generate("to be ", length=120, temperature=1.0, seed=43, mode=mode)


def test_greedy_ignores_the_seed(generator):
    texts = {generator.generate("the ", length=80, temperature=0, seed=s) for s in range(3)}
    assert len(texts) == 1


def test_stream_yields_what_generate_returns(generator):
    chars = list(generator.stream("will ", length=50, temperature=0.7, seed=5))
    assert all(len(c) == 1 for c in chars)
    assert "".join(chars) == generator.generate("will ", length=50, temperature=0.7, seed=5)


def test_stateful_and_window_agree_while_the_text_fits_the_window(generator):
    # Within maxlen characters both modes see the whole text from a zero state.
    n = generator.vocab.maxlen - 10
    a = generator.generate("truth ", length=n, temperature=0, mode="stateful")
    b = generator.generate("truth ", length=n, temperature=0, mode="window")
    assert a == b


def test_longer_texts_extend_shorter_ones_whatever_the_chunking(generator):
    for mode in ("stateful", "window"):
        short = generator.generate("the ", length=40, temperature=1.0, seed=3, mode=mode)
        long = generator.generate("the ", length=300, temperature=1.0, seed=3, mode=mode)
        assert long.startswith(short)


def test_many_streams_take_smaller_chunks_and_the_same_text(generator):
    from charsdk.engine import UNIFORMS_PER_CALL, chunk_sizes

    sizes = list(chunk_sizes(1000, streams=4096, vocab_size=57))
    assert sum(sizes) == 1000 and max(sizes) * 4096 * 57 <= UNIFORMS_PER_CALL
    third = list(chunk_sizes(10**6))[2]
    streams = UNIFORMS_PER_CALL // (third * generator.vocab.size) + 1  # the third chunk comes out smaller
    assert list(chunk_sizes(400, streams, generator.vocab.size))[2] < third
    texts = generator.generate("we ", length=400, temperature=0.8, n=streams, seed=6)
    assert texts[0] == generator.generate("we ", length=400, temperature=0.8, seed=6)


def test_n_samples_and_temperature_lists_return_lists(generator):
    texts = generator.generate("we ", length=50, temperature=[0.2, 1.0], n=3, seed=4)
    assert isinstance(texts, list) and len(texts) == 6 and len(set(texts)) > 1
    assert all(len(t) == 50 for t in texts)
    # stream i depends on (seed, i) only: the first of n is the single sample
    assert texts[0] == generator.generate("we ", length=50, temperature=0.2, seed=4)
    assert generator.generate("we ", length=50, n=1, temperature=[0.5], seed=4) == [
        generator.generate("we ", length=50, temperature=0.5, seed=4)]


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_stop_strings_end_a_sample(generator, mode):
    full = generator.generate("the ", length=400, temperature=1.0, seed=8, mode=mode)
    stop = full[150:153]
    cut = generator.generate("the ", length=400, temperature=1.0, seed=8, mode=mode, stop=[stop, "@"])
    assert cut == full[: full.index(stop)]
    streamed = "".join(generator.stream("the ", length=400, temperature=1.0, seed=8, mode=mode,
                                        stop=stop))
    assert streamed == cut


def test_top_k_one_is_greedy(generator):
    assert generator.generate("the ", length=80, temperature=1.5, top_k=1, seed=1) == \
        generator.generate("the ", length=80, temperature=0)


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_zero_uniform_numbers_give_no_nan_in_the_sampler(generator, mode):
    """u = 0 makes log(-log u) infinite: model.onnx caps it, so every character gets the same noise
    and each stream, greedy or not, filtered or not, draws the most likely character."""
    from charsdk.sampling import SamplingOptions

    options = [SamplingOptions(0.0), SamplingOptions(1.0), SamplingOptions(0.7, top_k=3, top_p=0.9)]
    uniforms = np.zeros((len(options), 40, generator.vocab.size), np.float32)
    drawn = draws(generator.backend, generator.vocab.encode("the "), options, uniforms, mode)
    greedy = generator.generate("the ", length=40, temperature=0, mode=mode)
    assert ["".join(generator.vocab.chars[i] for i in row) for row in drawn.T] == [greedy] * 3


def test_evaluate_scores_text_in_both_modes(generator):
    text = ("it is the business of the very few to be independent; it is a privilege of the strong. "
            "and whoever attempts it, even with the best right, but without being obliged to do so, ")
    window = generator.evaluate(text, mode="window")
    stateful = generator.evaluate(text, mode="stateful")
    for result in (window, stateful):
        assert result["chars_scored"] == len(text) - generator.vocab.maxlen
        assert 0.5 < result["bits_per_char"] < 4
        assert result["perplexity"] == pytest.approx(2 ** result["bits_per_char"])
    with pytest.raises(InputError, match=f"more than {generator.vocab.maxlen}"):
        generator.evaluate("too short")


@pytest.mark.parametrize("seed_text", ["", "the ", "a seed text longer than the model's context: " * 3])
def test_window_mode_is_the_books_loop(generator, seed_text):
    """Each character drawn from the last maxlen characters run from a zero state, as in the book."""
    from charsdk.engine import FIRST_CHUNK, chunk_sizes, stream_generators
    from charsdk.sampling import draw, gumbel_noise

    length, maxlen, size = 150, generator.vocab.maxlen, generator.vocab.size
    assert FIRST_CHUNK < length
    (rng,) = stream_generators(11, 1)
    uniforms = np.concatenate([rng.random((k, size), np.float32) for k in chunk_sizes(length)])
    text = seed_text
    for u in uniforms:
        probs = probs_after(generator, generator.vocab.encode(text[-maxlen:]))
        text += generator.vocab.chars[int(draw(probs, gumbel_noise(u[None], [0.8]))[0])]
    assert generator.generate(seed_text, length, 0.8, seed=11, mode="window") == text[len(seed_text):]


def test_upper_case_seed_is_lower_cased(generator):
    assert generator.generate("THE WILL", length=60, seed=1) == generator.generate(
        "the will", length=60, seed=1)


@pytest.mark.parametrize("mode", ["stateful", "window"])
def test_a_seed_longer_than_the_context_works(generator, mode):
    long_seed = "the philosopher, as the man of the most comprehensive responsibility, " * 4
    text = generator.generate(long_seed, length=50, seed=2, mode=mode)
    assert len(text) == 50
    if mode == "window":  # only the last maxlen characters count
        assert text == generator.generate(long_seed[-generator.vocab.maxlen :], length=50, seed=2,
                                          mode=mode)


def test_loading_never_runs_code_from_the_model_directory(tmp_path):
    model = copy_model(tmp_path)
    marker = tmp_path / "ran"
    for name in ("__init__.py", "vocab.py", "model.py", "sitecustomize.py"):
        (model / name).write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    Generator.load(model).generate("the ", length=10, seed=0)
    assert not marker.exists()


def test_length_zero_and_empty_seed(generator):
    assert generator.generate("abc", length=0) == ""
    assert len(generator.generate("", length=20, seed=0)) == 20


@pytest.mark.parametrize(
    "kwargs, message",
    [({"temperature": -1}, "temperature"), ({"length": -1}, "length"), ({"mode": "x"}, "mode"),
     ({"seed_text": "caf\u00e9 \u2603"}, "does not know"), ({"top_p": 0}, "top_p"),
     ({"top_k": -2}, "top_k"), ({"n": 0}, "n must be"), ({"temperature": []}, "temperature"),
     ({"stop": [""]}, "stop"), ({"seed": -1}, "seed must be"), ({"seed_text": 123}, "seed_text must be"),
     ({"seed": 1.5}, "seed must be")],
)
def test_bad_arguments_raise_input_error(generator, kwargs, message):
    with pytest.raises(InputError, match=message):
        generator.generate(**{"seed_text": "the ", **kwargs})


def copy_model(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    for path in default_model_dir().iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target


def test_broken_model_directories_are_refused(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        Generator.load(tmp_path / "nope")
    model = copy_model(tmp_path)
    onnx_path = model / Generator.load(model).vocab.onnx_file
    onnx_path.write_bytes(onnx_path.read_bytes()[:1000])
    with pytest.raises(ModelError, match="sha256"):
        Generator.load(model)
    (model / "vocab.json").unlink()
    with pytest.raises(ModelError, match="vocab.json is missing"):
        Generator.load(model)


def test_corrupt_onnx_with_matching_hash_is_a_model_error(tmp_path):
    import json

    from charsdk.session import sha256_of

    model = copy_model(tmp_path)
    data = json.loads((model / "vocab.json").read_text())
    (model / data["onnx"]["file"]).write_bytes(b"not an onnx file" * 10)
    data["onnx"]["sha256"] = sha256_of(model / data["onnx"]["file"])
    (model / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="cannot be loaded by onnxruntime"):
        Generator.load(model)


def test_vocab_width_must_match_the_onnx_input(tmp_path):
    import json

    model = copy_model(tmp_path)
    data = json.loads((model / "vocab.json").read_text())
    data["chars"] = data["chars"][:-1]
    (model / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="do not belong together"):
        Generator.load(model)


def test_a_graph_with_other_inputs_is_refused(tmp_path):
    """E.g. a graph written by another charsdk: re-export rather than fail mid-generation."""
    import onnx

    model = copy_model(tmp_path)
    vocab = Generator.load(model).vocab
    proto = onnx.load(str(model / vocab.onnx_file))
    proto.graph.input[0].name = "x"  # a valid graph that takes another input
    for node in proto.graph.node:
        node.input[:] = ["x" if name == "ids" else name for name in node.input]
    onnx.save(proto, str(model / vocab.onnx_file))
    data = json.loads((model / "vocab.json").read_text())
    data["onnx"]["sha256"] = sha256_of(model / vocab.onnx_file)
    (model / "vocab.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="re-export"):
        Generator.load(model)


def probs_after(generator, ids) -> np.ndarray:
    """The next-character distribution [1, V] after reading ids from a zero state, in one call
    (no ids: after the "no character" input, as an empty seed primes)."""
    ids = np.asarray(ids if len(ids) else [generator.vocab.no_char_id], np.int64)
    _, _, _, logits = generator.backend.run(ids[None], generator.backend.zero_state(1))
    return np.exp(log_softmax(logits[-1]))


def test_probabilities_are_a_distribution(generator):
    probs = probs_after(generator, generator.vocab.encode("the "))
    assert probs.shape == (1, generator.vocab.size)
    assert abs(float(np.sum(probs)) - 1) < 1e-5


def reference_text(generator, seed_text, length, temperature, rng, mode):
    """One stream drawn the slow, obvious way: the whole text so far read from a zero state for every
    character (in window mode only its last maxlen characters), numpy's Gumbel-max draw from uniforms
    that `rng` gives in one piece (chunking must not matter)."""
    from charsdk.sampling import draw, gumbel_noise

    maxlen, size = generator.vocab.maxlen, generator.vocab.size
    uniforms = rng.random((length, size), np.float32)
    ids = list(generator.vocab.encode(seed_text))
    for u in uniforms:
        probs = probs_after(generator, ids[-maxlen:] if mode == "window" else ids)
        ids.append(int(draw(probs, gumbel_noise(u[None], [temperature]))[0]))
    return generator.vocab.decode(ids[len(ids) - length :])


@pytest.mark.parametrize("mode", MODES)
def test_temperature_lists_are_temperature_major_and_every_sample_is_its_own_stream(generator, mode):
    """Sample i of [t0, t1] x n is temperature t[i // n], drawn from stream i of the seed alone."""
    temperatures, n, length, seed = [0.3, 1.5], 3, 24, 4
    texts = generator.generate("we ", length, temperatures, n=n, seed=seed, mode=mode)
    streams = np.random.SeedSequence(seed).spawn(len(texts))
    expected = [reference_text(generator, "we ", length, temperatures[i // n],
                               np.random.Generator(np.random.SFC64(streams[i])), mode)
                for i in range(len(texts))]
    assert texts == expected


def test_the_cli_labels_each_sample_with_its_temperature():
    from typer.testing import CliRunner

    from charsdk.cli import app

    result = CliRunner().invoke(app, ["gen", "-s", "we ", "-l", "24", "-t", "0.3", "-t", "1.5",
                                      "--samples", "3", "--seed", "4"])
    assert result.exit_code == 0
    texts = Generator.load().generate("we ", 24, [0.3, 1.5], n=3, seed=4)
    assert result.stdout == "".join(f"--- temperature {t}, sample {k + 1}\nwe {texts[3 * j + k]}\n"
                                    for j, t in enumerate([0.3, 1.5]) for k in range(3))


def stop_across(text: str, boundary: int, elsewhere: tuple[str, ...] = ()) -> tuple[str, int]:
    """A string whose first occurrence in `text` straddles `boundary` and that no text of `elsewhere` (the
    other streams') holds, and where that occurrence starts."""
    for length in range(4, 20):
        start = boundary - length // 2
        stop = text[start : start + length]
        if text.find(stop) == start and not any(stop in other for other in elsewhere):
            return stop, start
    raise AssertionError(f"no stop string found across {boundary}")


@pytest.mark.parametrize("mode", MODES)
def test_stop_strings_across_chunk_boundaries_end_the_sample(generator, mode):
    """A stop string split between two calls (chunk_sizes) still ends the sample, for one stream
    (generate and stream) and for each of n streams."""
    from charsdk.engine import chunk_sizes

    first, second, third = list(chunk_sizes(10**6))[:3]
    boundaries = [first, first + second]
    options = dict(length=first + second + third, temperature=1.0, seed=8, mode=mode)
    full = generator.generate("the ", **options)
    for boundary in boundaries:
        stop, start = stop_across(full, boundary)
        assert generator.generate("the ", **options, stop=stop) == full[:start]
        assert "".join(generator.stream("the ", **options, stop=[stop])) == full[:start]

    fulls = generator.generate("the ", **options, n=3)
    stops, starts = zip(*(stop_across(fulls[b], boundaries[b], fulls[:b] + fulls[b + 1 :]) for b in range(2)),
                        strict=True)
    cuts = generator.generate("the ", **options, n=3, stop=list(stops))
    for b, (text, cut) in enumerate(zip(fulls, cuts, strict=True)):
        first = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
        assert cut == text[:first]
        if b < 2:
            assert first == starts[b]  # the stream really was cut across its boundary


def test_one_generator_shared_by_threads_taking_forced_turns(generator):
    """Four threads each stream from one Generator, strictly in turns, one character each turn: every
    sampler call of one stream comes between calls of the others, and no stream sees another's state."""
    seeds, length = range(4), 300
    alone = [generator.generate("we ", length, 1.0, seed=s) for s in seeds]
    turn, texts = threading.Condition(), [[] for _ in seeds]
    state = {"next": 0, "error": None}

    def run(k):
        try:
            chars = generator.stream("we ", length, 1.0, seed=seeds[k])
            for _ in range(length):
                with turn:
                    assert turn.wait_for(lambda: state["next"] == k, timeout=60), "turn never came"
                    texts[k].append(next(chars))
                    state["next"] = (k + 1) % len(seeds)
                    turn.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread below
            state["error"] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(seeds))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert state["error"] is None, state["error"]
    assert ["".join(t) for t in texts] == alone


def prefix_log_probs(model_dir, text: str) -> np.ndarray:
    """log p(char t | chars before t) for t >= maxlen, each from a fresh read of the whole prefix from
    a zero state by model.onnx: onnxruntime and vocab.json only, no charsdk code."""
    vocab = json.loads((model_dir / "vocab.json").read_text(encoding="utf-8"))
    session = ort.InferenceSession(str(model_dir / vocab["onnx"]["file"]))
    index = {c: i for i, c in enumerate(vocab["chars"])}
    ids = np.array([[index[c] for c in text.lower()]], np.int64)
    V = len(index)
    feed = {"logits": np.zeros((1, V), np.float32), "uniforms": np.zeros((1, 0, V), np.float32),
            "temperature": np.ones(1, np.float32), "top_k": np.zeros(1, np.int64),
            "top_p": np.ones(1, np.float32), "use_filter": np.array(False), "window": np.array(0),
            "start": np.array(0), **{s["input"]: np.zeros((1, s["shape"][1]), np.float32)
                                     for s in vocab["onnx"]["states"]},
            "pattern_mask": np.zeros((1, V), np.float32), "pattern_next": np.zeros((1, V), np.int64),
            "pattern_state": np.zeros(1, np.int64)}
    logp = []
    for t in range(vocab["maxlen"], ids.shape[1]):
        (logits,) = session.run(["read_logits"], {**feed, "ids": ids[:, :t]})
        z = logits[-1, 0].astype(np.float64)
        logp.append(z[ids[0, t]] - z.max() - np.log(np.exp(z - z.max()).sum()))
    return np.array(logp)


def test_stateful_evaluation_agrees_with_scoring_every_prefix_from_scratch(generator):
    text = ("it is the business of the very few to be independent; it is a privilege of the strong. "
            "and whoever attempts it, even with the best right, but without being obliged to do so, ")
    expected = -prefix_log_probs(generator.path, text).mean() / np.log(2)
    result = generator.evaluate(text, mode="stateful")
    assert result["chars_scored"] == len(text) - generator.vocab.maxlen
    assert result["bits_per_char"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("mode", MODES)
def test_scoring_in_small_chunks_gives_the_figure_of_one_call(generator, mode, monkeypatch):
    """The state (and, in window mode, the count of characters read) carries from call to call."""
    import charsdk.graph_backend

    text = ("it is the business of the very few to be independent; it is a privilege of the strong. "
            "and whoever attempts it, even with the best right, but without being obliged to do so, ")
    whole = generator.evaluate(text, mode=mode)["bits_per_char"]
    monkeypatch.setattr(charsdk.graph_backend, "SCORE_CHUNK", 7)
    assert generator.evaluate(text, mode=mode)["bits_per_char"] == pytest.approx(whole, abs=1e-5)


@pytest.mark.skipif(not SHARED_CORPUS.exists(), reason=f"needs the corpus at {SHARED_CORPUS}")
def test_the_shipped_default_model_measures_its_claimed_held_out_figure(generator):
    """The last 10% of the Nietzsche text, never trained on, scored now (stateful, as charsdk generates)."""
    training = generator.vocab.training
    text = SHARED_CORPUS.read_text(encoding="utf-8").lower()
    assert len(text) == training["corpus_chars"]
    held_out = text[int(len(text) * (1 - training["recipe"]["holdout"])) :]
    bits = generator.evaluate(held_out, mode="stateful")["bits_per_char"]
    assert bits < 1.67  # the README's claim (1.661), and PPMd's 1.899 beaten clearly
    assert bits == pytest.approx(training["holdout_bits_per_char_stateful"], abs=5e-4)


def test_load_refuses_bad_threads_and_unknown_providers():
    with pytest.raises(InputError, match="threads must be an integer >= 1"):
        Generator.load(threads=0)
    with pytest.raises(InputError, match="this onnxruntime has no Bogus"):
        Generator.load(providers=["Bogus", "CPUExecutionProvider"])


def test_many_unknown_characters_are_counted(generator):
    unknown = "".join(chr(0x4E00 + i) for i in range(14))
    with pytest.raises(InputError, match=r"14 character\(s\) this model does not know: .* and 4 more;"):
        generator.generate("the " + unknown)


def test_the_shipped_base_is_a_cased_general_english_generator():
    """Generator.load("base"): every printable ASCII character and the Latin-1 letters, case kept."""
    base = Generator.load("base")
    assert base.vocab.lowercase is False and base.vocab.size == 175
    assert {chr(c) for c in range(32, 127)} <= set(base.vocab.chars) and "é" in base.vocab.chars
    text = base.generate("The King said", length=300, temperature=0.5, seed=1)
    assert len(text) == 300 and any(c.isupper() for c in text) and text.count(" ") > 20
    # the seed's case reaches the model (a lower-casing model would read these two seeds alike)
    assert base.generate("THE KING SAID", 40, seed=1) != base.generate("the king said", 40, seed=1)

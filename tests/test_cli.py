import json
import re

import pytest
from typer.testing import CliRunner

from charsdk import Generator, InputError, __version__
from charsdk.cli import app

runner = CliRunner()


def test_gen_prints_what_the_api_generates():
    result = runner.invoke(app, ["gen", "--seed-text", "the will to ", "--length", "80",
                                 "--temperature", "0.8", "--seed", "3"])
    assert result.exit_code == 0
    expected = Generator.load().generate("the will to ", length=80, temperature=0.8, seed=3)
    assert result.stdout == "the will to " + expected + "\n"  # the seed text, then what follows it
    quiet = runner.invoke(app, ["gen", "--seed-text", "the will to ", "--length", "80", "--temperature",
                                "0.8", "--seed", "3", "--no-echo"])
    assert quiet.exit_code == 0 and quiet.stdout == expected + "\n"
    model_seed = runner.invoke(app, ["gen", "--length", "10", "--seed", "3"])
    assert model_seed.stdout.startswith(Generator.load().vocab.default_seed_text)


def test_gen_with_a_model_directory_and_window_mode(trained_dir):
    result = runner.invoke(app, ["gen", "--model", str(trained_dir), "--seed-text", "the ",
                                 "--length", "30", "--seed", "1", "--mode", "window", "--no-echo"])
    assert result.exit_code == 0
    assert result.stdout == Generator.load(trained_dir).generate(
        "the ", length=30, seed=1, mode="window") + "\n"


def test_gen_with_several_temperatures_and_samples():
    result = runner.invoke(app, ["gen", "-s", "the ", "-l", "40", "-t", "0.2", "-t", "1.0",
                                 "-n", "2", "--seed", "5", "--top-p", "0.9"])
    assert result.exit_code == 0
    texts = Generator.load().generate("the ", 40, [0.2, 1.0], n=2, seed=5, top_p=0.9)
    assert result.stdout.count("--- temperature") == 4
    for text in texts:
        assert f"\nthe {text}\n" in result.stdout


def test_eval_reports_bits_per_char(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("the will to truth, which is to tempt us to many a hazardous enterprise, the "
                    "famous truthfulness of which all philosophers have hitherto spoken")
    result = runner.invoke(app, ["eval", str(path), "--json", "--mode", "stateful"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    expected = Generator.load().evaluate(path.read_text(), mode="stateful")
    assert data == expected
    result = runner.invoke(app, ["eval", str(path)])
    assert result.exit_code == 0 and "bits/char" in result.stdout
    (tmp_path / "bad.txt").write_bytes(b"\xff\xfe bad")
    result = runner.invoke(app, ["eval", str(tmp_path / "bad.txt")])
    assert result.exit_code == 2 and "UTF-8" in result.stderr


def test_unknown_seed_characters_can_be_skipped():
    result = runner.invoke(app, ["gen", "--seed-text", "the \u2603will", "-l", "30", "--seed", "1",
                                 "--on-unknown", "skip", "--no-echo"])
    assert result.exit_code == 0
    assert result.stdout == Generator.load().generate("the will", 30, seed=1) + "\n"
    refused = runner.invoke(app, ["gen", "--seed-text", "the \u2603will"])  # the flag, in the CLI's words
    assert refused.exit_code == 2 and "skip them (--on-unknown skip)" in refused.stderr
    with pytest.raises(InputError, match=r"skip them \(on_unknown='skip'\)$"):  # the library's own words
        Generator.load().generate("the \u2603will")


def test_the_old_short_seed_text_flag_works_for_a_release_with_one_warning_line():
    """-s read like --seed (the random seed) but was the seed text: --seed-text now, -s still taken."""
    old = runner.invoke(app, ["gen", "-s", "the ", "-l", "30", "--seed", "1", "--no-echo"])
    new = runner.invoke(app, ["gen", "--seed-text", "the ", "-l", "30", "--seed", "1", "--no-echo"])
    assert old.exit_code == 0 and old.stdout == new.stdout
    assert old.stderr.strip() == ("charsdk: warning: -s is deprecated and goes in charsdk 0.3: use "
                                  "--seed-text (-s reads like --seed, the random seed)") and not new.stderr


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"charsdk {__version__}"
    result = runner.invoke(app, ["gen", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--seed-text", "--length", "--temperature", "--seed", "--top-k",
                   "--top-p", "--stop", "--samples", "--mode", "--threads", "--provider"):
        assert option in result.stdout


def test_user_mistakes_are_one_line_errors(tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "vocab.json").write_text('{"format": "charsdk-model", "format_version": 7}')
    for args, message in [
        (["gen", "--model", str(tmp_path / "missing")], "does not exist"),
        (["gen", "--model", str(broken)], "format_version 7"),
        (["eval", str(tmp_path / "nope.txt")], "cannot read"),
        (["gen", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
        (["gen", "--length", "-3"], "--length must be"),
        (["gen", "--temperature", "-2"], "--temperature must be"),
        (["gen", "--seed-text", "\u2603"], "does not know"),
        (["gen", "--seed", "-1"], "--seed must be an integer >= 0"),
        (["gen", "--threads", "-3"], "--threads must be an integer >= 1"),
        (["gen", "--provider", "Bogus"], "--provider: this onnxruntime has no Bogus"),
        (["gen", "--samples", "0"], "--samples must be an integer >= 1"),
        (["gen", "--top-k", "-1"], "--top-k must be"),
        (["eval", __file__, "--threads", "0"], "--threads must be"),
    ]:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("charsdk: error:") and message in lines[0], lines
        assert result.stdout == ""
        assert result.exception is None or isinstance(result.exception, SystemExit)


def test_info_describes_the_model_in_a_few_lines():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) <= 12, lines
    fields = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    assert fields["model"].startswith("nietzsche ")
    assert fields["network"].startswith("2 x LSTM(256), 861,497 parameters")
    assert fields["weights"].startswith("int8, model-") and fields["weights"].endswith(" MB")
    assert fields["context"].startswith("100 characters")
    assert fields["characters"].startswith("57, lower-cased input: \\n !\"'(),-.0123")  # one line
    assert fields["held-out"].startswith("1.6608 stateful, 1.6636 window bits/char")  # vocab.json's
    assert fields["recipe"].startswith("finetune: ema 0.9975, optimizer adam, learning rate 0.006")
    assert fields["start"].startswith("fine-tuned from a base (best.keras sha256 ")


def test_info_json_is_the_whole_vocab():
    from charsdk import Generator

    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    generator = Generator.load()
    assert data == {"path": str(generator.path), **generator.vocab.to_dict()}


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """`charsdk gen | head -3`: the pipe closes early; the command ends with 0 and says nothing."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    process = subprocess.Popen([sys.executable, "-m", "charsdk", "gen", "--length", "20000", "-n", "1"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.read(100)
    process.stdout.close()
    assert process.wait(timeout=120) == 0
    assert process.stderr.read() == b""


def test_python_dash_m_charsdk_is_the_command_line():
    from tests.conftest import run_python

    result = run_python("import runpy, sys; sys.argv = ['charsdk', '--version']; runpy.run_module('charsdk', "
                        "run_name='__main__')")
    assert result.returncode == 0 and result.stdout.strip() == f"charsdk {__version__}"


def test_a_model_warning_is_one_line_on_stderr(tmp_path, monkeypatch):
    """An int8 export from before the pair limit, on a CPU whose products saturate: one line, then text."""
    import dataclasses
    import shutil

    from charsdk import Vocab, session
    from charsdk.generator import shipped_models_dir

    old = tmp_path / "old"
    shutil.copytree(shipped_models_dir() / "nietzsche-book", old)
    dataclasses.replace(Vocab.load(old / "vocab.json"), int8_pair_limit=0).save(old / "vocab.json")
    monkeypatch.setattr(session, "int16_pair_products", lambda: True)
    result = runner.invoke(app, ["gen", "--model", str(old), "--length", "20", "--seed", "1"])
    assert result.exit_code == 0 and len(result.stdout) >= 20
    warning = [line for line in result.stderr.splitlines() if line]
    assert len(warning) == 1 and warning[0].startswith(f"charsdk: warning: {old}: this int8 export predates")


def test_gen_shows_each_character_s_log_probability_and_its_alternatives():
    result = runner.invoke(app, ["gen", "--seed-text", "the ", "-l", "30", "--seed", "1", "--logprobs", "2"])
    sample = Generator.load().generate("the ", 30, seed=1, logprobs=2)
    header, body = result.stdout.split("\n", 1)
    assert result.exit_code == 0 and header.startswith("--- ") and body.startswith(f"the {sample.text}\n")
    table = body[len(f"the {sample.text}\n"):].splitlines()
    for line, score in zip(table, sample.scores, strict=True):
        char, logprob, top = re.fullmatch(r'\s*("(?:[^"\\]|\\.)*") +(\S+)  (.*)', line).groups()
        assert json.loads(char) == score.char and float(logprob) == pytest.approx(score.logprob, abs=1e-4)
        assert len(re.findall(r'"(?:[^"\\]|\\.)*" -?\d', top)) == len(score.top)
    refused = runner.invoke(app, ["gen", "--logprobs", "30"])
    assert refused.exit_code == 2 and "--logprobs must be an integer from 0 to 20" in refused.stderr

"""make plot: held-out curves from the runs' logs, PPMd as a line for runs on its corpus."""

import json

import pytest

from bench import plot


def write_log(artifacts, name, sha256, bits):
    run = artifacts / name
    run.mkdir(parents=True)
    epochs = [{"wall_s": 60.0 * (i + 1), "val_bits_per_char": b} for i, b in enumerate(bits)]
    run.joinpath("log.json").write_text(json.dumps({
        "recipe_name": "default", "corpus": {"path": "/data/text.txt", "sha256": sha256}, "epochs": epochs}))


@pytest.mark.parametrize("runs", [2, 12])  # past 10 runs: 20 colours and the legend beside the axes
def test_plot_draws_one_curve_per_run_and_ppmd_for_their_corpus(tmp_path, monkeypatch, runs):
    import matplotlib.figure

    names = [f"run{i}" for i in range(runs)]
    for i, name in enumerate(names):
        write_log(tmp_path, name, "abc", [3.0, 2.5, 2.2 - i / 100])  # the last run is the best
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"corpus": {"sha256": "abc"}, "bits_per_char": {"PPMd order 6": 1.9}}))
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path: saved.append((fig, path)))
    out = tmp_path / "curves.png"
    assert plot.main([*names, "--artifacts", str(tmp_path), "--baselines", str(baselines), "--out", str(out),
                      "--ymax", "2.6"]) == 0
    (fig, path), = saved
    ax = fig.axes[0]
    assert path == str(out) and ax.get_ylim()[1] == 2.6
    curves = [line for line in ax.get_lines() if line.get_label().startswith("run")]
    assert [line.get_label().split(" ")[0] for line in curves] == names
    assert len({line.get_color() for line in curves}) == runs  # no two runs share a colour
    widest = max(curves, key=lambda line: line.get_linewidth())
    assert widest.get_label().startswith(names[-1] + " ")  # the lowest figure stands out
    assert sum(line.get_linewidth() == widest.get_linewidth() for line in curves) == 1
    assert [list(line.get_ydata()) for line in ax.get_lines() if "PPMd" in line.get_label()] == [[1.9, 1.9]]


def test_a_fine_tune_s_curve_starts_at_minute_0_with_the_base_s_figure(tmp_path, monkeypatch):
    import matplotlib.figure

    write_log(tmp_path, "ft", "abc", [2.0, 1.9])
    log = json.loads((tmp_path / "ft" / "log.json").read_text())
    (tmp_path / "ft" / "log.json").write_text(json.dumps({**log, "start": {"val_bits_per_char": 2.2}}))
    saved = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path: saved.append(fig))
    assert plot.main(["ft", "--artifacts", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 0
    (curve,) = [line for line in saved[0].axes[0].get_lines() if line.get_label().startswith("ft ")]
    assert list(curve.get_xdata()) == [0.0, 1.0, 2.0] and list(curve.get_ydata()) == [2.2, 2.0, 1.9]


def test_plot_names_a_run_without_a_log(tmp_path, capsys):
    assert plot.main(["missing", "--artifacts", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"plot: error: {tmp_path / 'missing' / 'log.json'} does not exist: train missing first")

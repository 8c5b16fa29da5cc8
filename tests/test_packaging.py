"""charsdk as users get it: no TensorFlow, and a real wheel in a clean virtual environment."""

import json
import subprocess
import sys
import urllib.error
import urllib.request
import venv
import zipfile

from bench.server import Server
from charsdk import Generator
from tests.conftest import ROOT, run_python


def test_using_charsdk_never_imports_tensorflow():
    result = run_python(
        "import sys, charsdk\n"
        "from charsdk.cli import app\n"
        "charsdk.Generator.load().generate('the ', length=20, seed=0)\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras', 'tf2onnx')]\n"
        "assert not heavy, heavy\n"
    )
    assert result.returncode == 0, result.stderr


def test_wheel_installs_and_generates_in_a_clean_venv(tmp_path):
    import shutil

    shutil.rmtree(ROOT / "build", ignore_errors=True)  # setuptools would add files a past build left there
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w",
                    str(tmp_path / "dist"), str(ROOT)], check=True, timeout=600)
    (wheel,) = (tmp_path / "dist").glob("charsdk-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.stat().st_size <= 3_500_000  # the three shipped models, int8, one graph each
    assert "charsdk/playground/index.html" in names and "charsdk/models/base/vocab.json" in names
    vocab = Generator.load().vocab
    assert sum(p.stat().st_size for p in Generator.load().path.iterdir()) <= 2_000_000
    for name in ("vocab.json", vocab.onnx_file):
        assert f"charsdk/models/nietzsche/{name}" in names
    assert not [n for n in names if n.startswith(("train/", "tests/", "artifacts/"))]

    venv.create(tmp_path / "venv", with_pip=True)
    bin_dir = tmp_path / "venv" / "bin"
    subprocess.run([bin_dir / "pip", "install", "--quiet", str(wheel)], check=True, timeout=600)
    result = subprocess.run([bin_dir / "charsdk", "gen", "--seed-text", "the ", "--length", "60",
                             "--seed", "9"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "the " + Generator.load().generate("the ", length=60, seed=9) + "\n"
    check = run_python("import importlib.util as u; print(u.find_spec('tensorflow') is None)",
                       executable=str(bin_dir / "python"))
    assert check.stdout.strip() == "True"

    # the server is an extra: without it, one line saying how to get it; with it, a real server
    result = subprocess.run([bin_dir / "charsdk", "serve"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "pip install 'charsdk[serve]'" in result.stderr, result.stderr
    subprocess.run([bin_dir / "pip", "install", "--quiet", f"charsdk[serve] @ {wheel.as_uri()}"], check=True,
                   timeout=600)
    server = Server(command=[bin_dir / "charsdk"])
    try:
        body = json.dumps({"prompt": "the ", "max_tokens": 60, "seed": 9, "temperature": 0.5}).encode()
        with urllib.request.urlopen(server.base + "/completions", body, timeout=30) as response:
            text = json.load(response)["choices"][0]["text"]
        assert text == Generator.load().generate("the ", length=60, seed=9)
    finally:
        server.stop()

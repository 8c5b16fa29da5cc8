"""`make check-js`: the shipped models run by onnxruntime-node and by onnxruntime-web (wasm) in headless
Chromium, as the README's contract describes, with ids identical to charsdk's.

Writes each model's ONNX file and a JSON of inputs and charsdk's outputs (a seed read, then 300
characters drawn at temperature 0.5, in both modes) to a temporary directory; bench/js/run.js runs
them in Node and in a page served from 127.0.0.1. Needs node and npm (packages: bench/js/package.json,
installed on first use) and, for the browser, Chromium (Debian: chromium-headless-shell).
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np

from charsdk import Generator
from charsdk.generator import shipped_models_dir
from charsdk.sampling import SamplingOptions

JS = Path(__file__).with_name("js")
SEED_TEXT = "the free spirit, who has once attained to freedom of reason, "
CHROMIUMS = ("chromium-headless-shell", "chromium", "chromium-browser")


def write_case(generator: Generator, name: str, directory: Path) -> None:
    vocab = generator.vocab
    ids = vocab.encode(SEED_TEXT)
    uniforms = np.random.default_rng(0).random((1, 300, vocab.size), dtype=np.float32)
    expected = {}
    for mode, window in (("stateful", 0), ("window", vocab.maxlen)):
        state = generator.backend.zero_state(vocab.maxlen if window else 1)
        _, _, drawn, read = generator.backend.run(ids[None], state, None, uniforms, [SamplingOptions(0.5)],
                                                  window)
        expected[mode] = {"ids_out": drawn[:, 0].tolist(), "read_last": read[-1, 0].tolist()}
    shutil.copy(generator.path / vocab.onnx_file, directory / f"{name}.onnx")
    (directory / f"{name}.json").write_text(json.dumps({
        "ids": ids.tolist(), "uniforms": uniforms.ravel().tolist(), "V": vocab.size, "maxlen": vocab.maxlen,
        "states": [[s.input, s.size] for s in vocab.states], "expected": expected}))


def serve(directory: Path, models: Path) -> http.server.ThreadingHTTPServer:
    """bench/js (page, check.js, node_modules) with the models under /models/, on 127.0.0.1."""
    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path):
            if path.startswith("/models/"):
                return str(models / Path(path).name)
            return super().translate_path(path)

        def log_message(self, *args):
            pass

    handler = functools.partial(Handler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> int:
    if not shutil.which("node") or not shutil.which("npm"):
        print("check-js: error: node and npm are needed (Debian: apt install nodejs npm)", file=sys.stderr)
        return 2
    if not (JS / "node_modules").is_dir():  # the install scripts fetch GPU libraries: not needed here
        subprocess.run(["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund"], cwd=JS, check=True)
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp)
        for path in sorted(p for p in shipped_models_dir().iterdir() if p.is_dir()):
            write_case(Generator.load(path), path.name, models)
        chromium = next((shutil.which(c) for c in CHROMIUMS if shutil.which(c)), None)
        runs = [("onnxruntime-node", ["node", "run.js", str(models), "node"], {})]
        if chromium:
            server = serve(JS, models)
            runs.append(("onnxruntime-web (wasm) in headless Chromium",
                         ["node", "run.js", str(models), "web"],
                         {"PORT": str(server.server_address[1]), "CHROMIUM": chromium}))
        else:
            print("check-js: no Chromium (Debian: apt install chromium-headless-shell): browser skipped")
        for label, command, env in runs:
            out = subprocess.run(command, cwd=JS, capture_output=True, text=True, timeout=600,
                                 env={**os.environ, **env})
            if out.returncode:
                print(f"{label}: error: {out.stderr.strip()}")
                failed = True
                continue
            results = json.loads(out.stdout)
            print(f"{label}{' (' + results.pop('browser') + ')' if 'browser' in results else ''}:")
            for name, modes in results.items():
                for mode, r in modes.items():
                    same = r["same_ids"] == r["of"]
                    failed |= not same
                    print(f"  {name} {mode}: {r['same_ids']}/{r['of']} ids as charsdk's, last read logits "
                          f"within {r['read_logits_max_abs_diff']:.1e}, {r['chars_per_s']:,} chars/s "
                          "in a second, timed call")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

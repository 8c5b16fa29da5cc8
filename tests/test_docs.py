"""The README and docs/ stay true: every command they show is run (the fast ones) or named here as one
that trains, measures or installs for minutes, and every link resolves.

Commands are the lines of ```sh blocks (a trailing "  # comment" is not part of the command); ```python
blocks run as they are. `localhost:8000` and `127.0.0.1:8000` are a server started from the documented
`charsdk serve` command on a free port; `artifacts/mine` is a tiny model trained by the tests."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.server import Server
from tests.conftest import ROOT, make_text

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# Commands not run here, each with the reason; any other command in the docs is run by these tests.
NOT_RUN = {
    r"^make (train|export|memory|ship|base)\b": "trains or exports for minutes to hours",
    r"^make (bench|bench-train|bench-serve|bench-memory|baselines|plot|check-js|eval-dynamic)\b":
        "measures for minutes",
    r"^make test$": "is what CI runs, this test included",
    r"^make gen$": "sets up .venv-runtime from PyPI (tests/test_packaging.py installs the wheel in a clean "
                   "venv instead)",
    r"^pip install ": "installs from PyPI (tests/test_packaging.py installs the wheel and its serve extra)",
    r"^npm install ": "installs from npm (tests/test_js.py runs js/ with the packages .ci/run installs)",
    r"^export TF_CONFIG=": "configures a cluster of machines (tests/test_cluster.py runs one locally)",
    r"^charsdk serve --port 8001 &": "starts two replicas for a load balancer that is not here",
}


def fenced_blocks(page: Path):
    """(language, text, line number) of each fenced block."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```"):
            language, start = lines[i][3:].strip(), i + 1
            i += 1
            while not lines[i].startswith("```"):
                i += 1
            blocks.append((language, "\n".join(lines[start:i]), start + 1))
        i += 1
    return blocks


def documented(language: str):
    found = []
    for page in PAGES:
        for lang, text, line in fenced_blocks(page):
            if lang != language:
                continue
            if language == "python":
                found.append(pytest.param(text, id=f"{page.name}:{line}"))
                continue
            for offset, command in enumerate(text.splitlines()):
                command = re.sub(r"\s{2,}#.*$", "", command).strip()
                if command and not command.startswith("#"):
                    found.append(pytest.param(command, id=f"{page.name}:{line + offset}"))
    return found


COMMANDS = documented("sh")
PYTHON = documented("python")


def reason_not_run(command: str) -> str | None:
    return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, command)), None)


def is_server(command: str) -> bool:
    return command.startswith("charsdk serve") and not reason_not_run(command)


def needs_server(text: str) -> bool:
    return bool(re.search(r"(localhost|127\.0\.0\.1):8000", text))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, trained_dir) -> Path:
    """Where the commands run: a text.txt to score, and artifacts/mine (a tiny trained model)."""
    path = tmp_path_factory.mktemp("docs")
    (path / "text.txt").write_text(make_text(3000, seed=5).lower(), encoding="utf-8")
    (path / "artifacts").mkdir()
    (path / "artifacts" / "mine").symlink_to(trained_dir)
    return path


def environment() -> dict:
    """The test's own interpreter and its `charsdk` first on PATH; train/ importable."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT)}


class DocumentedServer(Server):
    """A documented `charsdk serve` command, on a free port instead of 8000."""

    def __init__(self, command: str):
        argv = command.replace("--port 8000", "").split()
        assert argv[:2] == ["charsdk", "serve"], command
        super().__init__(*argv[2:], env=environment())
        self.address = self.root.removeprefix("http://")

    def substitute(self, text: str) -> str:
        return re.sub(r"(localhost|127\.0\.0\.1):8000", self.address, text)


@pytest.fixture(scope="module")
def server():
    readme_serve = next(c.values[0] for c in COMMANDS if is_server(c.values[0]))
    running = DocumentedServer(readme_serve)
    yield running
    running.stop()


def test_every_documented_command_is_run_or_named_as_slow():
    assert COMMANDS and PYTHON
    unknown = [c.values[0] for c in COMMANDS if not (runnable(c.values[0]) or reason_not_run(c.values[0]))]
    assert not unknown, f"commands in the docs that no test runs: {unknown} (run them here, or add them " \
                        "to NOT_RUN with the reason)"


def runnable(command: str) -> bool:
    return command.startswith(("charsdk ", "curl ", "python -m "))


def run(command: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=environment(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("command", [c for c in COMMANDS if not reason_not_run(c.values[0])])
def test_documented_command_runs(command, workdir, request):
    if is_server(command):
        server = DocumentedServer(command)
        server.stop()
        return
    if needs_server(command):
        command = request.getfixturevalue("server").substitute(command)
    result = run(command, workdir)
    assert result.returncode == 0, f"{command}\n{result.stderr}"
    assert result.stdout.strip(), command
    if command.startswith("curl "):
        assert '"choices"' in result.stdout or "data: [DONE]" in result.stdout, result.stdout


@pytest.mark.parametrize("code", PYTHON)
def test_documented_python_runs(code, workdir, request):
    if needs_server(code):
        code = request.getfixturevalue("server").substitute(code)
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, env=environment(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line.lstrip("#")) for line in page.read_text(encoding="utf-8").splitlines()
            if line.startswith("#")}


def test_every_link_in_the_docs_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists() or (anchor and resolved.suffix == ".md"
                                          and anchor not in anchors(resolved)):
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, broken


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").encode()) <= 12_000

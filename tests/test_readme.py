"""The docs test: every fenced ``bash`` and ``python`` block of README.md runs, in order, as written.

How the blocks run
------------------
* In README order, in ONE bash session (``bash --noprofile --norc`` with ``set -eo pipefail``):
  ``export``, ``cd``, shell variables and background jobs (``cmd &`` ... ``kill %1``) carry
  over from one bash block to the next. The first failing command fails the test, which
  names the block's README line and shows its output.
* A ``python`` block is saved to a file and run as ``python FILE`` from that same session
  (same folder, same exported variables), each in a fresh interpreter: give every python
  block its own imports.
* The session starts in an empty temporary folder that looks like a clone: every top-level
  entry of the repository is symlinked into it (so ``.venv/bin/activate`` and
  ``tests/hub_server.py`` resolve) while the files a block writes land in the temporary
  folder, never in the repository. ``cones2`` and ``python`` of the running virtual
  environment come first on PATH. ``CONES2_HOME`` is an empty temporary folder and
  ``CONES2_BASE_MODEL`` the session's demo model (one model build for the whole suite);
  HOME, XDG_*_HOME, TMPDIR and HF_HOME point into the temporary folder.
* Each block has :data:`BLOCK_TIMEOUT_S` seconds. Keep README blocks quick on the demo model.

Markers
-------
A block that needs something special gets one HTML comment (invisible on GitHub) as the
last non-blank line before its opening fence::

    <!-- docs-test: skip (REASON) -->
        Not run. REASON is required. Keep skips rare: prefer a block that runs.
    <!-- docs-test: replace (REASON): COMMAND -->
        Not run; the bash COMMAND runs in its place (e.g. for ``make quickstart``, which CI
        runs itself: its last step runs instead, so later blocks find its results).
    <!-- docs-test: hub-server -->
        The block starts the local Hub test server (tests/hub_server.py) on port 8765; it
        runs with every ``8765`` replaced by a free port, so parallel runs do not collide.

Any other ``docs-test:`` comment fails the test, as does a marker that is not followed by
a bash or python block.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BLOCK_TIMEOUT_S = 600
HUB_SERVER_PORT = "8765"
LANGUAGES = ("bash", "python")
_DONE = "__cones2_docs_test_block_done__"
_MARKER = re.compile(r"^<!--\s*docs-test:\s*(?P<body>.*?)\s*-->$")
_FENCE = re.compile(r"^(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")


class DocsTestError(AssertionError):
    """A README block failed, or the README's docs-test markers are malformed."""


@dataclass(frozen=True)
class Block:
    language: str  # "bash" or "python"
    code: str
    line: int  # README line of the opening fence (1-based)
    action: str = "run"  # "run", "skip", "replace", "hub-server"
    reason: str = ""
    command: str = ""  # for "replace"

    def where(self) -> str:
        return f"README.md line {self.line} ({self.language} block)"


def parse_marker(body: str, line: int) -> tuple[str, str, str]:
    """``(action, reason, command)`` of a marker comment's text after ``docs-test:``."""
    if body == "hub-server":
        return "hub-server", "", ""
    skip = re.fullmatch(r"skip\s*\((?P<reason>[^)]*\S[^)]*)\)", body)
    if skip:
        return "skip", skip["reason"].strip(), ""
    replace = re.fullmatch(r"replace\s*\((?P<reason>[^)]*\S[^)]*)\)\s*:\s*(?P<command>\S.*)", body)
    if replace:
        return "replace", replace["reason"].strip(), replace["command"].strip()
    raise DocsTestError(
        f"README.md line {line}: unknown docs-test marker {body!r} "
        "(use 'skip (REASON)', 'replace (REASON): COMMAND' or 'hub-server')"
    )


def extract_blocks(text: str) -> list[Block]:
    """Every fenced block of the markdown ``text``; bash and python ones are returned, with markers."""
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: tuple[str, str, str, int] | None = None
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        marker = _MARKER.match(stripped)
        fence = _FENCE.match(stripped)
        if marker:
            if pending is not None:
                raise DocsTestError(f"README.md line {pending[3]}: docs-test marker not followed by a code block")
            pending = (*parse_marker(marker["body"], i + 1), i + 1)
        elif fence:
            start, close = i, fence["fence"]
            language = fence["info"].lower()
            i += 1
            body = []
            while i < len(lines) and not lines[i].strip().startswith(close):
                body.append(lines[i])
                i += 1
            if language in LANGUAGES:
                action, reason, command = pending[:3] if pending else ("run", "", "")
                blocks.append(Block(language, "\n".join(body) + "\n", start + 1, action, reason, command))
            elif pending is not None:
                raise DocsTestError(f"README.md line {pending[3]}: docs-test marker before a {language or 'plain'} block")
            pending = None
        elif stripped and pending is not None:
            raise DocsTestError(f"README.md line {pending[3]}: docs-test marker not followed by a code block")
        i += 1
    if pending is not None:
        raise DocsTestError(f"README.md line {pending[3]}: docs-test marker not followed by a code block")
    return blocks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BashSession:
    """One long-lived bash process; blocks are sourced into it one after another."""

    def __init__(self, cwd: Path, env: dict[str, str], workdir: Path) -> None:
        self.workdir = workdir
        self.proc = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            text=True,
            start_new_session=True,  # its own process group: teardown stops background jobs too
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._send("set -eo pipefail")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def _send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def run(self, index: int, block: Block, script: str) -> None:
        """Run ``script`` (bash) for ``block``; raise :class:`DocsTestError` if it fails."""
        path = self.workdir / f"block-{index:02d}.sh"
        log = self.workdir / f"block-{index:02d}.log"
        path.write_text(script)
        self._send(f"source {shlex.quote(str(path))} > {shlex.quote(str(log))} 2>&1 < /dev/null; echo {_DONE}")
        deadline = time.monotonic() + BLOCK_TIMEOUT_S
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise self._failure(block, log, f"still running after {BLOCK_TIMEOUT_S} s") from None
            if line == _DONE:
                return
            if line is None:
                code = self.proc.wait(timeout=10)
                raise self._failure(block, log, f"exit code {code}")

    @staticmethod
    def _failure(block: Block, log: Path, what: str) -> DocsTestError:
        output = log.read_text(errors="replace") if log.is_file() else ""
        tail = "\n".join(output.splitlines()[-40:])
        return DocsTestError(f"{block.where()} failed: {what}\n--- block ---\n{block.code}--- output (last lines) ---\n{tail}")

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def block_script(index: int, block: Block, workdir: Path, port: int) -> str | None:
    """The bash text that runs ``block`` (None: not run)."""
    if block.action == "skip":
        return None
    if block.action == "replace":
        return block.command + "\n"
    code = block.code.replace(HUB_SERVER_PORT, str(port)) if block.action == "hub-server" else block.code
    if block.language == "bash":
        return code
    path = workdir / f"block-{index:02d}.py"
    path.write_text(code)
    return f"python {shlex.quote(str(path))}\n"


def run_readme(text: str, cwd: Path, env: dict[str, str], workdir: Path) -> list[tuple[Block, str]]:
    """Run every bash/python block of ``text`` in order; returns ``(block, "ran"|"skipped")``."""
    blocks = extract_blocks(text)
    port = free_port()
    done: list[tuple[Block, str]] = []
    session = BashSession(cwd, env, workdir)
    try:
        for index, block in enumerate(blocks):
            script = block_script(index, block, workdir, port)
            if script is None:
                done.append((block, "skipped"))
                continue
            session.run(index, block, script)
            done.append((block, "ran"))
    finally:
        session.close()
    return done


def clone_like_folder(folder: Path) -> Path:
    """A folder whose top-level entries are symlinks to the repository's (outputs stay here)."""
    folder.mkdir(parents=True)
    for entry in REPO.iterdir():
        if entry.name in {".git", "cones2-quickstart"}:
            continue
        (folder / entry.name).symlink_to(entry)
    venv = folder / ".venv"
    if not venv.exists() and sys.prefix != sys.base_prefix:
        venv.symlink_to(sys.prefix)
    return folder


def docs_env(tmp: Path, demo_model_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONES2_", "HF_", "XDG_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    for name in ("home", "data", "cache", "config", "state", "tmp", "hf"):
        (tmp / name).mkdir()
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        HOME=str(tmp / "home"),
        XDG_DATA_HOME=str(tmp / "data"),
        XDG_CACHE_HOME=str(tmp / "cache"),
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_STATE_HOME=str(tmp / "state"),
        TMPDIR=str(tmp / "tmp"),
        HF_HOME=str(tmp / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
        CONES2_HOME=str(tmp / "cones2-home"),
        CONES2_BASE_MODEL=str(demo_model_dir),
        TRANSFORMERS_VERBOSITY="error",
        DIFFUSERS_VERBOSITY="error",
    )
    return env


def _repo_files() -> set[str]:
    """Every file of the repository but git's, the venv's and caches (outputs would show up here)."""
    skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache"}
    found = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in skip and not d.endswith(".egg-info")]
        found.update(str(Path(root, name).relative_to(REPO)) for name in files)
    return found


# --------------------------------------------------------------------------- tests


def test_readme_blocks_run_in_order(tmp_path: Path, demo_model_dir: Path) -> None:
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        pytest.skip("the README's blocks use the virtual environment: run the suite from one (make test does)")
    before = _repo_files()
    cwd = clone_like_folder(tmp_path / "clone")
    workdir = tmp_path / "blocks"
    workdir.mkdir()
    done = run_readme(README.read_text(encoding="utf-8"), cwd, docs_env(tmp_path, demo_model_dir), workdir)

    ran = [b for b, what in done if what == "ran"]
    skipped = [b for b, what in done if what == "skipped"]
    assert len(ran) >= 8, f"only {len(ran)} README blocks ran"
    assert len(skipped) <= 2, f"keep skips rare: {[b.where() for b in skipped]}"
    assert all(b.reason for b in skipped)
    # blocks wrote their outputs into the temporary clone, nothing into the repository
    assert (cwd / "cones2-quickstart" / "quickstart.png").is_file()
    assert sorted(_repo_files() - before) == []


SAMPLE = """\
# title

```bash
export GREETING=hello
cd sub
```

Text between.

```python
import os, pathlib
pathlib.Path("from-python.txt").write_text(os.environ["GREETING"] + " " + os.getcwd())
```

<!-- docs-test: skip (needs a GPU) -->
```bash
exit 99
```

<!-- docs-test: replace (CI runs this itself): echo replaced > replaced.txt -->
```bash
make everything
```

```text
not run: neither bash nor python
```

<!-- docs-test: hub-server -->
```bash
echo 8765 > port.txt
sleep 300 &
```

```bash
kill %1
test "$GREETING" = hello
```
"""


def test_blocks_and_markers_are_parsed() -> None:
    blocks = extract_blocks(SAMPLE)
    assert [(b.language, b.action, b.line) for b in blocks] == [
        ("bash", "run", 3),
        ("python", "run", 10),
        ("bash", "skip", 16),
        ("bash", "replace", 21),
        ("bash", "hub-server", 30),
        ("bash", "run", 35),
    ]
    assert blocks[2].reason == "needs a GPU"
    assert blocks[3].command == "echo replaced > replaced.txt"
    assert blocks[0].code == "export GREETING=hello\ncd sub\n"


@pytest.mark.parametrize(
    "bad",
    [
        "<!-- docs-test: skip -->\n```bash\ntrue\n```\n",  # no reason
        "<!-- docs-test: run-twice -->\n```bash\ntrue\n```\n",  # unknown
        "<!-- docs-test: skip (x) -->\nsome text\n```bash\ntrue\n```\n",  # not right before a block
        "<!-- docs-test: skip (x) -->\n```text\ntrue\n```\n",  # not a bash/python block
        "text\n<!-- docs-test: skip (x) -->\n",  # nothing follows
    ],
)
def test_malformed_markers_fail(bad: str) -> None:
    with pytest.raises(DocsTestError, match="line"):
        extract_blocks(bad)


def test_runner_carries_state_and_honours_markers(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"
    (cwd / "sub").mkdir(parents=True)
    workdir = tmp_path / "blocks"
    workdir.mkdir()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = run_readme(SAMPLE, cwd, env, workdir)
    assert [what for _, what in done] == ["ran", "ran", "skipped", "ran", "ran", "ran"]
    sub = cwd / "sub"
    assert (sub / "from-python.txt").read_text() == f"hello {sub}"  # cwd and exports reached python
    assert (sub / "replaced.txt").read_text() == "replaced\n"
    port = (sub / "port.txt").read_text().strip()
    assert port.isdigit() and port != HUB_SERVER_PORT


@pytest.mark.parametrize(
    ("readme", "line"),
    [
        ("```bash\ntrue\n```\n\n```bash\nfalse\necho not reached\n```\n", 5),  # a failing command mid-block
        ("```bash\ntrue\n```\n\n```python\nraise SystemExit(3)\n```\n", 5),
        ("```bash\nfalse | cat\n```\n", 1),  # pipefail
    ],
)
def test_a_failing_block_fails_with_its_line(tmp_path: Path, readme: str, line: int) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with pytest.raises(DocsTestError, match=f"README.md line {line} .*failed: exit code"):
        run_readme(readme, tmp_path, env, tmp_path)

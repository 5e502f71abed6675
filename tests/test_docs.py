"""The documentation runs: every command block of README.md and docs/*.md is executed, and the guide's
configuration reference covers every CLI flag and every `MINIGPT_*` variable.

What it is: a harness that extracts the fenced blocks of the docs, starts ONE live server on the bundled demo
model (uvicorn in a thread, a free port), rewrites `localhost:8000` / `127.0.0.1:8000` to it, and runs
```bash / ```sh blocks with `bash -euo pipefail` and ```python blocks with `.venv/bin/python`, each file's blocks in
document order in one temporary working directory (so a tutorial can build on its earlier blocks). That directory
stands in for a fresh shell in the checkout after `make install`: the repository's files and `.venv` are linked
into it, the virtualenv is NOT on PATH and nothing else is exported, so a command written `minigpt-train ...`
instead of `.venv/bin/minigpt-train ...` fails here as it would for a reader. Each block is one test, named by
file:line. It also renders the reference tables (`python -m tests.test_docs` prints them for docs/guide.md) and
checks the guide against the parsers.
What it is not: a place for doc-only exceptions. Blocks that cannot run here (GPU, vLLM, llama.cpp, Ollama,
docker) are fenced ```text in the docs with a one-line "Not run by the doc test: ..." note before them; the only
lines skipped inside runnable blocks are the long-running commands in SKIPPED_COMMANDS.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GUIDE = ROOT / "docs" / "guide.md"
# Files whose blocks are all ```text, with why; they are parsed but never run.
NOT_RUN_FILES = {"docs/benchmarks.md": "GPU benchmark commands with their recorded numbers (run on the device machine)"}
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "python": "python", "py": "python"}
# Long-running commands: skipped where they appear as a whole line of a runnable block. `make test` is what CI
# itself runs; `make serve` and `minigpt-serve` serve forever, and this harness already runs that server
# (a skipped `minigpt-serve` line still has its flags parsed into Settings, so a wrong flag fails here).
SKIPPED_COMMANDS = (("make", "serve"), ("make", "test"), ("minigpt-serve",))
COMMAND_WORDS = (
    "minigpt-",
    ".venv/bin/",
    "python",
    "pip",
    "curl",
    "make",
    "torchrun",
    "vllm",
    "llama-",
    "ollama",
    "docker",
)
VENV_BIN = ".venv/bin/"
# What a doc block's working directory links from the checkout (outputs such as runs/ or checkpoints/ are not).
CHECKOUT_ENTRIES = (
    "minigpt_core",
    "training",
    "server",
    "tools",
    "tests",
    "docs",
    "docker",
    "scripts",
    "Makefile",
    "pyproject.toml",
    "README.md",
    "Dockerfile",
)
# The project's console scripts and the venv's tools: in the docs they are always called through .venv/bin/.
VENV_COMMAND = re.compile(
    r"(?<![\w./-])(minigpt-(?:info|train|eval|serve|generate|bench|export)|python3?|pip3?|torchrun)(?=\s|$|\))"
)
BLOCK_TIMEOUT_S = 150
NOTE = "not run by the doc test"
# What a flag without argparse help means, for the reference tables.
FALLBACK_HELP = {
    "--max-steps": "optimizer steps to run (stage default when unset)",
    "--warmup-steps": "linear learning-rate warm-up steps",
    "--seq-len": "tokens per row",
    "--seed": "random seed",
    "--device": "where to run",
    "--batch-size": "rows per batch",
    "--temperature": "sampling temperature (0 = greedy)",
    "--top-p": "nucleus sampling mass",
    "--mode": "what to run",
    "--max-new-tokens": "answer length limit",
    "--max-bad-fraction": "fail when more data lines than this are bad",
    "--prompt-len": "prompt tokens per request",
    "--output-len": "generated tokens per request",
    "--steps": "measured steps",
    "--warmup": "unmeasured warm-up steps",
    "--configs": "comma list of presets",
    "--concurrency": "comma list of concurrent requests",
    "--json": "write the results as JSON here",
}
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    path: str  # relative to ROOT
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    before: str  # the non-blank line just above the fence

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """Every fenced block of a markdown file, with its language tag ('' when untagged)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, end = i, i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        before = next((ln.strip() for ln in reversed(lines[:start]) if ln.strip()), "")
        body = "\n".join(lines[start + 1 : end]) + "\n"
        blocks.append(Block(str(path.relative_to(ROOT)), start + 1, m.group(2).lower(), body, before))
        i = end + 1
    return blocks


ALL_BLOCKS = [b for f in DOC_FILES for b in extract_blocks(f)]
RUN_BLOCKS = [b for b in ALL_BLOCKS if b.lang in RUN_LANGS and b.path not in NOT_RUN_FILES]


def _logical_lines(body: str) -> list[str]:
    """Shell lines with backslash continuations joined."""
    out: list[str] = []
    pending = ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    if pending:
        out.append(pending)
    return out


def _skipped(words: list[str]) -> tuple[str, ...] | None:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):  # leading VAR=value assignments
        words = words[1:]
    if words:
        words = [words[0].removeprefix(VENV_BIN), *words[1:]]
    for cmd in SKIPPED_COMMANDS:
        # `minigpt-serve` with any flags; the `make` targets exactly.
        if (cmd == ("minigpt-serve",) and words[:1] == list(cmd)) or tuple(words) == cmd:
            return cmd
    return None


def prepare_bash(body: str) -> tuple[str, list[list[str]]]:
    """The script to run (skipped commands replaced by `:`) and the argv of each skipped `minigpt-serve`."""
    script: list[str] = []
    serve_argvs: list[list[str]] = []
    for line in _logical_lines(body):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = []
        cmd = _skipped(words)
        if cmd is None:
            script.append(line)
            continue
        if cmd == ("minigpt-serve",):
            at = next(i for i, w in enumerate(words) if w.removeprefix(VENV_BIN) == "minigpt-serve")
            serve_argvs.append(words[at + 1 :])
        script.append(f": skipped by the doc test: {' '.join(cmd)}")
    return "\n".join(script) + "\n", serve_argvs


@dataclass
class DocRunner:
    """Runs the blocks of each file in order in that file's own working directory, each at most once."""

    base_url: str  # http://127.0.0.1:PORT
    workdir: Path
    results: dict[str, subprocess.CompletedProcess[str]] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """A fresh shell's environment: no virtualenv on PATH (nor VIRTUAL_ENV), no MINIGPT_* settings."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MINIGPT_") and k != "VIRTUAL_ENV"}
        venv_bins = {Path(sys.executable).parent.resolve(), Path(sys.prefix, "bin").resolve()}
        if os.environ.get("VIRTUAL_ENV"):
            venv_bins.add(Path(os.environ["VIRTUAL_ENV"], "bin").resolve())
        kept = [d for d in env.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() not in venv_bins]
        env["PATH"] = os.pathsep.join(kept)
        env.update(MINIGPT_CACHE_DIR=str(self.workdir / "cache"), MPLBACKEND="Agg")
        env.update(PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", NO_COLOR="1")
        return env

    def checkout(self, block: Block) -> Path:
        """The block file's working directory: the checkout's files and `.venv` linked in, outputs kept here."""
        cwd = self.workdir / block.path.replace("/", "_")
        if not cwd.exists():
            cwd.mkdir(parents=True)
            for name in CHECKOUT_ENTRIES:
                if (ROOT / name).exists():
                    (cwd / name).symlink_to(ROOT / name)
            (cwd / ".venv").symlink_to(Path(sys.prefix))  # the virtualenv these tests run in = `make install`'s
        return cwd

    def rewrite(self, text: str) -> str:
        port = self.base_url.rsplit(":", 1)[1]
        return re.sub(r"(localhost|127\.0\.0\.1):8000\b", f"127.0.0.1:{port}", text)

    def run(self, block: Block) -> subprocess.CompletedProcess[str]:
        for earlier in RUN_BLOCKS:
            if earlier.path == block.path and earlier.line < block.line and earlier.id not in self.results:
                self._run_one(earlier)
        return self.results.get(block.id) or self._run_one(block)

    def _run_one(self, block: Block) -> subprocess.CompletedProcess[str]:
        cwd = self.checkout(block)
        body = self.rewrite(block.body)
        if RUN_LANGS[block.lang] == "python":
            argv, stdin = [str(cwd / VENV_BIN / "python"), "-"], body
        else:
            script, serve_argvs = prepare_bash(body)
            for args in serve_argvs:
                _check_serve_flags(args)
            argv, stdin = ["bash", "-euo", "pipefail", "-c", script], ""
        try:
            proc = subprocess.run(
                argv, input=stdin, cwd=cwd, env=self.env(), capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S
            )
        except subprocess.TimeoutExpired as exc:
            proc = subprocess.CompletedProcess(argv, 124, str(exc.stdout or ""), f"timed out: {exc}")
        self.results[block.id] = proc
        return proc


def _check_serve_flags(args: list[str]) -> None:
    from server.__main__ import settings_from_args

    try:
        settings_from_args(args)
    except SystemExit as exc:
        raise AssertionError(f"minigpt-serve {' '.join(args)}: rejected by the parser") from exc


@contextlib.contextmanager
def demo_server() -> Iterator[str]:
    """The bundled demo model behind the server tests' launcher (`serve_app`: waits on uvicorn's startup event)."""
    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.resources import DEMO_MODEL_DIR
    from server.app import create_app
    from server.settings import Settings
    from tests.server.conftest import serve_app

    model, _ = load_checkpoint(DEMO_MODEL_DIR, "cpu")
    engine = Engine(model, max_num_seqs=8, max_queued=64)
    engine.start()
    try:
        with serve_app(create_app(Settings(), engine=engine), log_level="warning") as url:
            yield url
    finally:
        engine.shutdown()


@pytest.fixture(scope="module")
def runner() -> Iterator[DocRunner]:
    with demo_server() as url, tempfile.TemporaryDirectory(prefix="minigpt-docs-") as tmp:
        yield DocRunner(url, Path(tmp))


@pytest.mark.parametrize("block", RUN_BLOCKS, ids=[b.id for b in RUN_BLOCKS])
def test_doc_block_runs(block: Block, runner: DocRunner) -> None:
    proc = runner.run(block)
    assert proc.returncode == 0, (
        f"{block.id} ({block.lang}) exited {proc.returncode}\n--- block ---\n{block.body}"
        f"--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-3000:]}"
    )


def test_the_harness_finds_the_docs() -> None:
    files = {b.path for b in RUN_BLOCKS}
    assert {"README.md", "docs/guide.md", "docs/training.md", "docs/api.md", "docs/export.md"} <= files
    assert len(RUN_BLOCKS) >= 20


def test_not_run_command_blocks_say_why() -> None:
    """A ```text block that holds commands (outside NOT_RUN_FILES) carries a 'Not run by the doc test' note."""
    missing = [
        b.id
        for b in ALL_BLOCKS
        if b.lang in ("text", "")
        and b.path not in NOT_RUN_FILES
        and b.body.lstrip().startswith(COMMAND_WORDS)
        and NOTE not in b.before.lower()
    ]
    assert not missing, f"command blocks fenced as text without a '{NOTE}: why' line before them: {missing}"


def test_skip_list_is_exact() -> None:
    script, serve = prepare_bash(
        "make serve   # comment\nmake test\nmake lint\nMINIGPT_PORT=1 .venv/bin/minigpt-serve --port 9\n"
        ".venv/bin/minigpt-serve runs/sft\n"
    )
    assert script.splitlines()[2] == "make lint"
    assert sum(line.startswith(": skipped") for line in script.splitlines()) == 4
    assert serve == [["--port", "9"], ["runs/sft"]]
    with pytest.raises(AssertionError):
        _check_serve_flags(["--no-such-flag"])


def test_commands_are_written_for_a_fresh_shell() -> None:
    """Console scripts, python, pip and torchrun go through `.venv/bin/`; `$ROOT` is nothing a reader has.

    The runnable blocks would fail anyway (no venv on PATH here), but skipped `minigpt-serve` lines and ```text
    blocks are not run, so this holds them to the same convention.
    """
    bad = []
    for b in ALL_BLOCKS:
        if b.lang not in ("bash", "sh", "shell", "text", "") or b.path in NOT_RUN_FILES:
            continue
        for line in _logical_lines(b.body):
            code = line.split(" #", 1)[0]
            if "$ROOT" in code or "${ROOT}" in code:
                bad.append(f"{b.id}: $ROOT: {line.strip()}")
            if b.lang in ("text", "") and NOTE not in b.before.lower():
                continue  # a text block that is output or a file, not commands
            for m in VENV_COMMAND.finditer(code):
                if code[m.end() :].startswith(" -m venv") or _quoted(code, m.start()):
                    continue  # the system Python making another venv; or words inside a string
                bad.append(f"{b.id}: {m.group(1)} without {VENV_BIN}: {line.strip()}")
    assert not bad, "\n".join(bad)


def _quoted(line: str, at: int) -> bool:
    """True when position `at` is inside a '...' or "..." string of a shell line (not inside $(...))."""
    quote = ""
    for ch in line[:at]:
        if quote and ch == quote:
            quote = ""
        elif not quote and ch in "'\"":
            quote = ch
    return quote == "'" or (quote == '"' and "$(" not in line[:at].rsplit('"', 1)[-1])


# ---- configuration reference -------------------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def _captured_parser(main: Callable[[list[str]], Any]) -> argparse.ArgumentParser:
    """The parser a `main()` builds inline, caught at its `parse_args` (nothing else of main runs)."""

    def fake_parse_args(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        raise _Captured(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = fake_parse_args  # type: ignore[method-assign,assignment]
    try:
        main([])
    except _Captured as exc:
        return exc.parser
    finally:
        argparse.ArgumentParser.parse_args = original  # type: ignore[method-assign]
    raise AssertionError(f"{main} did not call parse_args")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every console command (and subcommand) of the project, by the name a user types."""
    mod = importlib.import_module
    out: dict[str, argparse.ArgumentParser] = {"minigpt-train": mod("training.cli").build_parser()}
    for name, sub in _subparsers(mod("training.eval_cli").build_parser()).items():
        out[f"minigpt-eval {name}"] = sub
    out["minigpt-serve"] = mod("server.__main__").build_parser()
    out["minigpt-generate"] = mod("server.generate_cli").build_parser()
    out["minigpt-export"] = mod("training.export").build_parser()
    for name, sub in _subparsers(mod("server.bench").build_parser()).items():
        out[f"minigpt-bench {name}"] = _captured_parser(mod("training.bench").main) if name == "train" else sub
    out["minigpt-info"] = _captured_parser(mod("minigpt_core.info").main)
    return out


def _flags(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and not isinstance(a, argparse._HelpAction)]


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _flag_row(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings)
    default = action.default
    shown = "" if default in (None, False, argparse.SUPPRESS) else f"`{default}`"
    help_ = (
        (action.help or FALLBACK_HELP.get(action.option_strings[-1], ""))
        .replace("%(default)s", str(default))
        .replace("%%", "%")
    )
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        help_ = f"{help_} (one of {', '.join(map(str, action.choices))})".lstrip()
    return f"| {names} | {shown} | {_cell(help_)} |"


def settings_env() -> dict[str, tuple[str, str, str]]:
    """MINIGPT_* of the server's Settings → (flag, default, description)."""
    from server.__main__ import build_parser
    from server.settings import Settings

    flags = {a.dest: a for a in _flags(build_parser())}
    out = {}
    for name, info in Settings.model_fields.items():
        default = "" if info.default is None else f"`{info.default}`"
        flag = flags.get(name)
        help_ = info.description or (flag.help if flag is not None else "") or ""
        out[f"MINIGPT_{name.upper()}"] = (f"`{flag.option_strings[0]}`" if flag else "—", default, help_)
    return out


def package_env_vars() -> set[str]:
    """Every MINIGPT_* name the packages (not the tests) read."""
    found: set[str] = set()
    for pkg in ("minigpt_core", "training", "server", "tools"):
        for f in (ROOT / pkg).rglob("*.py"):
            found |= set(re.findall(r"MINIGPT_[A-Z][A-Z0-9_]*", f.read_text(encoding="utf-8")))
    return found


def reference_markdown() -> str:
    """The flag tables of docs/guide.md's configuration reference, straight from the parsers."""
    parts: list[str] = []
    for name, parser in command_parsers().items():
        parts += [f"### `{name}`", "", "| flag | default | meaning |", "| --- | --- | --- |"]
        parts += [_flag_row(a) for a in _flags(parser)] + [""]
    parts += [
        "### `MINIGPT_*` server settings",
        "",
        "| variable | flag | default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    parts += [f"| `{k}` | {f} | {d} | {_cell(h)} |" for k, (f, d, h) in settings_env().items()]
    return "\n".join(parts) + "\n"


def _guide_section(text: str, heading: str) -> str:
    start = text.find(heading + "\n")
    assert start >= 0, f"docs/guide.md has no section {heading!r}"
    end = text.find("\n#", start + len(heading))
    return text[start : end if end >= 0 else len(text)]


def test_guide_reference_has_every_flag() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    missing = []
    for name, parser in command_parsers().items():
        section = _guide_section(text, f"### `{name}`")
        missing += [f"{name} {s}" for a in _flags(parser) for s in a.option_strings if f"`{s}`" not in section]
    assert not missing, f"flags missing from docs/guide.md (regenerate: python -m tests.test_docs): {missing}"


def test_guide_reference_has_every_setting() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    names = set(settings_env()) | package_env_vars()
    assert "MINIGPT_API_KEY" in names and "MINIGPT_CACHE_DIR" in names
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"MINIGPT_* variables missing from docs/guide.md: {missing}"


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())

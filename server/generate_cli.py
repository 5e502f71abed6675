"""`minigpt-generate` (also `python -m server.generate_cli`): talk to a checkpoint in-process, without HTTP (chat,
single prompt, or a batch file). Not to be confused with `server/generation.py`, the server's per-choice runner.

It loads the checkpoint, starts an `Engine` in this process, prepares each chat with `minigpt_core.prompting` and
reads it with `OutputParser`, as the server does, so what you see here is what the API returns. Chat mode keeps the
history and streams tokens as they come; a line starting with `think:` turns on thinking for that turn (`--ultra-think`
for every turn); reasoning is shown dimmed on a terminal, or in a `[thinking]` block otherwise. Batch mode
queues every prompt at once (the engine batches them) and prints one JSON line per prompt. On a terminal, chat
lines can be edited and earlier ones recalled with the arrow keys (readline); Ctrl-C stops an answer.

`--raw` skips the chat template: the prompt is encoded as plain text and continued, as `/v1/completions` does
(for pretrained-only checkpoints, which never learned the template); in chat mode every line is a new prompt.

With `--tools calculator,unit_convert,...` (or `all`), chat and single mode run an agent loop: the tools are
rendered into the prompt, calls are grammar-constrained to their schemas (`--tool-choice` for the first round of
each turn, "auto" after), each call is executed locally through `tools.registry` and its result (or
"error: ...") is fed back as a `tool` message, until the model answers without calling or `--max-tool-rounds`
rounds have run (then one last round with calls banned). Every call and result is printed.
It is not an HTTP client.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TextIO

from minigpt_core.errors import MiniGPTError
from minigpt_core.output_parser import (
    Content,
    OutputParser,
    Reasoning,
    Segment,
    ToolCallEnd,
    ToolCallStart,
    parse_tool_call,
)
from minigpt_core.prompting import ChatRequest, PreparedChat, prepare
from minigpt_core.request import TokenEvent
from minigpt_core.resources import DEMO_MODEL_DIR, resolve_device
from minigpt_core.sampling import SamplingParams
from server.generation import tool_call_id
from tools.base import ToolError
from tools.registry import ToolRegistry, default_registry

logger = logging.getLogger(__name__)

DIM, RESET = "\x1b[2m", "\x1b[0m"
EXIT_WORDS = frozenset({"exit", "quit", "/exit", "/quit"})
Choice = Literal["auto", "required", "none"]
MAX_TOOL_RESULT_CHARS = 2000  # a tool result longer than this is cut before it goes back into the context


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minigpt-generate", description="Generate text with a MiniGPT checkpoint.")
    p.add_argument(
        "--model", "--model-path", dest="model", type=Path, default=None, help="checkpoint directory (default: demo)"
    )
    p.add_argument("--mode", choices=("chat", "single", "batch"), default="chat")
    p.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text as it is")
    p.add_argument("--prompt", default=None, help="the prompt for --mode single (default: read stdin)")
    p.add_argument("--prompts-file", type=Path, default=None, help="--mode batch: one prompt per line")
    p.add_argument("--max-length", type=int, default=256, help="max new tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ultra-think", action="store_true", help="think before answering (every turn)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: $OMP_NUM_THREADS, else half the usable CPUs)",
    )
    p.add_argument("--tools", default=None, help="comma-separated built-in tools to offer (or 'all'): agent loop")
    p.add_argument(
        "--tool-choice", choices=("auto", "required", "none"), default="auto", help="first round of each turn"
    )
    p.add_argument("--max-tool-rounds", type=int, default=4, help="rounds of tool calls per turn")
    return p


def tool_registry(spec: str | None) -> ToolRegistry | None:
    """`--tools` -> the registry of those built-ins (None without the flag); ToolError names unknown ones."""
    if spec is None:
        return None
    registry = default_registry()
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if names == ["all"]:
        return registry
    if not names:
        raise ToolError("--tools needs at least one tool name")
    return registry.subset(names)


class Generator:
    """An engine plus tokenizer (plus the tools it may call); `answer(messages)` yields (kind, text) pieces.

    Kinds: 'reasoning', 'content', and with tools 'call' (text = `{"name": ..., "arguments": {...}}` JSON).
    """

    def __init__(
        self, engine: Any, tokenizer: Any, params: SamplingParams, registry: ToolRegistry | None = None
    ) -> None:
        self.engine, self.tokenizer, self.params = engine, tokenizer, params
        self.registry = registry

    def _prepare(self, messages: list[dict[str, Any]], thinking: bool, tool_choice: Choice = "auto") -> PreparedChat:
        """The chat as the server prepares it; the tools stay in view in a round that bans calls ("none")."""
        tools = self.registry.schemas() if self.registry is not None else None
        chat = ChatRequest(messages, tools, tool_choice, thinking=thinking, show_tools_when_none=True)
        return prepare(chat, self.tokenizer, vocab_size=self.engine.vocab_size)

    def _prompt(self, prep: PreparedChat) -> tuple[list[int], SamplingParams]:
        ids = prep.prompt_ids
        params = self._budget(ids, f"the conversation ({len(ids)} tokens) fills the context; start a new one")
        return ids, replace(params, banned_token_ids=prep.banned_token_ids)

    def raw_prompt(self, text: str) -> tuple[list[int], SamplingParams]:
        """Plain text -> ids, no template (as /v1/completions encodes a prompt), and the budget that fits."""
        ids = self.tokenizer.encode(text)
        if not ids:
            raise MiniGPTError("--raw needs a non-empty prompt")
        return ids, self._budget(ids, f"the prompt ({len(ids)} tokens) fills the context")

    def _budget(self, ids: list[int], full: str) -> SamplingParams:
        """The sampling params with max_new_tokens cut to the room left after `ids`; `full` when none is left."""
        room = self.engine.max_model_len - len(ids)
        if room < 1:
            raise MiniGPTError(full)
        return replace(self.params, max_new_tokens=min(self.params.max_new_tokens, room))

    def complete(self, text: str) -> Iterator[tuple[str, str]]:
        """Continue `text` without the chat template; yields ('content', text) pieces."""
        ids, params = self.raw_prompt(text)
        parser = OutputParser(self.tokenizer, thinking=False, parse_tools=False)
        for seg in _segments(self.engine.generate(ids, params), parser):
            if isinstance(seg, Content):
                yield "content", seg.text

    def answer(
        self, messages: list[dict[str, Any]], thinking: bool, tool_choice: Choice = "auto"
    ) -> Iterator[tuple[str, str]]:
        prep = self._prepare(messages, thinking, tool_choice)
        ids, params = self._prompt(prep)
        parser = OutputParser(self.tokenizer, thinking=thinking, parse_tools=prep.parse_tools)
        stream = self.engine.generate(ids, params, prep.constraint())
        names: dict[int, str] = {}
        for seg in _segments(stream, parser):
            if isinstance(seg, Reasoning):
                yield "reasoning", seg.text
            elif isinstance(seg, Content):
                yield "content", seg.text
            elif isinstance(seg, ToolCallStart):
                names[seg.index] = seg.name
            elif isinstance(seg, ToolCallEnd):
                name = json.dumps(names[seg.index], ensure_ascii=False)
                text = f'{{"name": {name}, "arguments": {seg.arguments_json}}}'
                # a call cut short (max tokens) is shown as text, not run
                yield ("call" if parse_tool_call(text) is not None else "content"), text


def _segments(stream: Iterator[TokenEvent], parser: OutputParser) -> Iterator[Segment]:
    """The parser's segments for a stream of engine events, up to the finish; the stream is closed at the end."""
    try:
        for event in stream:
            yield from parser.push(event.token_id) if event.token_id is not None else []
            if event.finish_reason is not None:
                yield from parser.finish()
                return
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _show(pieces: Iterator[tuple[str, str]], out: TextIO, calls: list[dict[str, Any]] | None = None) -> str:
    """Print pieces as they come; return the content text. Tool calls are appended to `calls` (parsed)."""
    tty = out.isatty()
    content, kind_open = "", ""
    for kind, text in pieces:
        if kind == "call":  # printed as it completes, run after the round
            call = json.loads(text)
            if calls is not None:
                calls.append(call)
            if kind_open == "reasoning":
                out.write(RESET + "\n" if tty else "\n[/thinking]\n")
            elif kind_open:
                out.write("\n")
            args = json.dumps(call["arguments"], ensure_ascii=False)
            out.write(f"[tool call] {call['name']}({args})\n")
            kind_open = ""
            continue
        if kind != kind_open:
            if kind == "reasoning":
                out.write(DIM if tty else "[thinking]\n")
            elif kind_open == "reasoning":
                out.write(RESET + "\n\n" if tty else "\n[/thinking]\n")
            kind_open = kind
        if kind == "content":
            content += text
        out.write(text)
        out.flush()
    if kind_open == "reasoning":
        out.write(RESET if tty else "\n[/thinking]")
    out.write("\n")
    return content


class LineReader:
    """Reads chat lines: through readline (editing, arrow-key history) when both ends are the terminal."""

    def __init__(self, inp: TextIO, out: TextIO) -> None:
        self.inp, self.out = inp, out
        self.interactive = inp is sys.stdin and out is sys.stdout and inp.isatty() and out.isatty()
        if self.interactive:
            with contextlib.suppress(ImportError):  # not on every platform; input() still works without it
                import readline  # noqa: F401  (importing it is what turns line editing on for input())

    def read(self, prompt: str = "> ") -> str | None:
        """The next line without its newline; None at end of input."""
        if self.interactive:
            try:
                return input(prompt)
            except EOFError:
                self.out.write("\n")
                return None
        self.out.write(prompt)
        self.out.flush()
        line = self.inp.readline()
        return line.rstrip("\n") if line else None


def run_chat(
    gen: Generator,
    system: str | None,
    ultra_think: bool,
    inp: TextIO,
    out: TextIO,
    *,
    tool_choice: Choice = "auto",
    max_tool_rounds: int = 4,
    raw: bool = False,
) -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    if raw:
        out.write("MiniGPT, raw text (no chat template): each line is continued on its own; 'exit' to quit.\n")
    else:
        out.write("MiniGPT chat. Start a line with 'think:' to reason first; 'exit' to quit.\n")
    reader = LineReader(inp, out)
    while True:
        try:
            line = reader.read()
        except KeyboardInterrupt:  # Ctrl-C at the prompt quits
            out.write("\n")
            return
        if line is None or line.strip().lower() in EXIT_WORDS:
            return
        text = line.strip()
        if not text:
            continue
        if raw:
            try:
                _show(gen.complete(text), out)
            except MiniGPTError as exc:
                out.write(f"error: {exc}\n")
            except KeyboardInterrupt:
                out.write("\n[stopped]\n")
            continue
        thinking = ultra_think or text.lower().startswith("think:")
        if text.lower().startswith("think:"):
            text = text[len("think:") :].strip()
        before = len(history)
        history.append({"role": "user", "content": text})
        try:
            if gen.registry is None:
                history.append({"role": "assistant", "content": _show(gen.answer(history, thinking), out)})
            else:
                agent_turn(gen, history, thinking, out, first_choice=tool_choice, max_rounds=max_tool_rounds)
        except MiniGPTError as exc:
            out.write(f"error: {exc}\n")
            del history[before:]
        except KeyboardInterrupt:  # Ctrl-C stops this answer (its request is cancelled), not the program
            out.write(RESET if out.isatty() else "")
            out.write("\n[stopped]\n")
            del history[before:]


def run_tool(registry: ToolRegistry, name: str, arguments: Any) -> str:
    """The tool's result text, or "error: ..." (what the model sees either way); cut to MAX_TOOL_RESULT_CHARS."""
    try:
        result = registry.call(name, arguments)
    except ToolError as exc:
        result = f"error: {exc}"
    return result if len(result) <= MAX_TOOL_RESULT_CHARS else result[:MAX_TOOL_RESULT_CHARS] + " [truncated]"


def agent_turn(
    gen: Generator,
    history: list[dict[str, Any]],
    thinking: bool,
    out: TextIO,
    *,
    first_choice: Choice = "auto",
    max_rounds: int = 4,
) -> str:
    """Answer the last user message, running the model's tool calls; appends every message to `history`.

    Round 0 uses `first_choice`, later rounds "auto"; after `max_rounds` rounds with calls, a last round bans
    them ("none") so the turn always ends with an answer. Returns that answer's content.
    """
    if gen.registry is None:
        raise MiniGPTError("agent_turn needs a Generator with tools")
    for round_no in range(max(0, max_rounds) + 1):
        choice: Choice = "none" if round_no >= max_rounds else (first_choice if round_no == 0 else "auto")
        calls: list[dict[str, Any]] = []
        content = _show(gen.answer(history, thinking, choice), out, calls)
        if not calls:
            history.append({"role": "assistant", "content": content})
            return content
        wire: list[dict[str, Any]] = [
            {"id": tool_call_id(), "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls
        ]
        history.append({"role": "assistant", "content": content or None, "tool_calls": wire})
        for call in wire:
            fn = call["function"]
            result = run_tool(gen.registry, fn["name"], fn["arguments"])
            out.write(f"[tool result] {result}\n")
            history.append({"role": "tool", "tool_call_id": call["id"], "name": fn["name"], "content": result})
    raise AssertionError("unreachable: the last round bans tool calls")


def run_batch(gen: Generator, prompts: list[str], thinking: bool, out: TextIO, *, raw: bool = False) -> None:
    """Queue all prompts first (the engine batches them), then collect each answer in order."""
    streams = []
    for prompt in prompts:
        chat = [{"role": "user", "content": prompt}]
        ids, params = gen.raw_prompt(prompt) if raw else gen._prompt(gen._prepare(chat, thinking))
        streams.append((prompt, ids, gen.engine.generate(ids, params)))
    for prompt, _, stream in streams:
        segments = list(_segments(stream, OutputParser(gen.tokenizer, thinking=thinking, parse_tools=False)))
        reasoning = "".join(s.text for s in segments if isinstance(s, Reasoning))
        content = "".join(s.text for s in segments if isinstance(s, Content))
        row = {"prompt": prompt, "output": content} | ({"reasoning": reasoning} if thinking else {})
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from minigpt_core.checkpoint import load_checkpoint
    from minigpt_core.engine import Engine
    from minigpt_core.threads import configure_threads

    try:
        configure_threads(args.threads)
        params = SamplingParams(
            max_new_tokens=args.max_length, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
        if args.raw and (args.tools or args.ultra_think or args.system):
            raise MiniGPTError(
                "--raw has no chat template: it cannot be combined with --tools, --ultra-think or --system"
            )
        model, tokenizer = load_checkpoint(args.model or DEMO_MODEL_DIR, resolve_device(args.device))
        params.validate(model.config.vocab_size)
        prompts = _batch_prompts(args) if args.mode == "batch" else []
        registry = tool_registry(args.tools)
        if registry is not None and args.mode == "batch":
            raise MiniGPTError("--tools works with --mode chat or single")
    except (MiniGPTError, OSError, ToolError) as exc:
        print(f"minigpt-generate: error: {exc}", file=sys.stderr)
        return 2
    slots, queued = max(1, min(16, len(prompts))), max(64, len(prompts))
    with Engine(model, max_num_seqs=slots, max_queued=queued, output_vocab=tokenizer.vocab_size) as engine:
        gen = Generator(engine, tokenizer, params, registry)
        try:
            _run(gen, args, prompts)
        except MiniGPTError as exc:
            print(f"minigpt-generate: error: {exc}", file=sys.stderr)
            return 1
    return 0


def _run(gen: Generator, args: argparse.Namespace, prompts: list[str]) -> None:
    agent = {"tool_choice": args.tool_choice, "max_tool_rounds": args.max_tool_rounds}
    if args.mode == "chat":
        run_chat(gen, args.system, args.ultra_think, sys.stdin, sys.stdout, raw=args.raw, **agent)
    elif args.mode == "batch":
        run_batch(gen, prompts, args.ultra_think, sys.stdout, raw=args.raw)
    elif args.raw:
        _show(gen.complete(args.prompt if args.prompt is not None else sys.stdin.read()), sys.stdout)
    else:
        prompt = args.prompt if args.prompt is not None else sys.stdin.read()
        messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
            {"role": "user", "content": prompt}
        ]
        if gen.registry is None:
            _show(gen.answer(messages, args.ultra_think), sys.stdout)
        else:
            agent_turn(
                gen,
                messages,
                args.ultra_think,
                sys.stdout,
                first_choice=args.tool_choice,
                max_rounds=args.max_tool_rounds,
            )


def _batch_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompts_file is None:
        raise MiniGPTError("--mode batch needs --prompts-file")
    lines = [line.strip() for line in args.prompts_file.read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise MiniGPTError(f"{args.prompts_file}: no prompts")
    return prompts


if __name__ == "__main__":
    sys.exit(main())

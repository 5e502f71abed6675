"""`minigpt-generate`: talk to a checkpoint in-process, without HTTP (chat, single prompt, or a batch file).

It loads the checkpoint, starts an `Engine` in this process and uses the same chat template and
`OutputParser` as the server, so what you see here is what the API returns. Chat mode keeps the history and
streams tokens as they come; a line starting with `think:` turns on thinking for that turn (`--ultra-think`
for every turn); reasoning is shown dimmed on a terminal, or in a `[thinking]` block otherwise. Batch mode
queues every prompt at once (the engine batches them) and prints one JSON line per prompt.
It is not an HTTP client and does not run tools (that agent loop belongs to issue 9).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from minigpt_core.chat_template import render
from minigpt_core.errors import MiniGPTError
from minigpt_core.output_parser import Content, OutputParser, Reasoning
from minigpt_core.sampling import SamplingParams

logger = logging.getLogger(__name__)

DIM, RESET = "\x1b[2m", "\x1b[0m"
EXIT_WORDS = frozenset({"exit", "quit", "/exit", "/quit"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="minigpt-generate", description="Generate text with a MiniGPT checkpoint.")
    p.add_argument("--model-path", type=Path, default=None, help="checkpoint directory (default: demo model)")
    p.add_argument("--mode", choices=("chat", "single", "batch"), default="chat")
    p.add_argument("--prompt", default=None, help="the prompt for --mode single (default: read stdin)")
    p.add_argument("--prompts-file", type=Path, default=None, help="--mode batch: one prompt per line")
    p.add_argument("--max-length", type=int, default=256, help="max new tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ultra-think", action="store_true", help="think before answering (every turn)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    return p


class Generator:
    """An engine plus tokenizer; `answer(messages)` yields ('reasoning' | 'content', text) pieces."""

    def __init__(self, engine: Any, tokenizer: Any, params: SamplingParams) -> None:
        self.engine, self.tokenizer, self.params = engine, tokenizer, params

    def _prompt(self, messages: list[dict[str, Any]], thinking: bool) -> tuple[list[int], SamplingParams]:
        ids = render(messages, add_generation_prompt=True, enable_thinking=thinking, tokenizer=self.tokenizer).ids
        room = self.engine.max_model_len - len(ids)
        if room < 1:
            raise MiniGPTError(f"the conversation ({len(ids)} tokens) fills the context; start a new one")
        return ids, replace(self.params, max_new_tokens=min(self.params.max_new_tokens, room))

    def answer(self, messages: list[dict[str, Any]], thinking: bool) -> Iterator[tuple[str, str]]:
        ids, params = self._prompt(messages, thinking)
        parser = OutputParser(self.tokenizer, thinking=thinking, parse_tools=False)
        stream = self.engine.generate(ids, params)
        try:
            for event in stream:
                segments = parser.push(event.token_id) if event.token_id is not None else []
                if event.finish_reason is not None:
                    segments += parser.finish()
                for seg in segments:
                    if isinstance(seg, Reasoning):
                        yield "reasoning", seg.text
                    elif isinstance(seg, Content):
                        yield "content", seg.text
                if event.finish_reason is not None:
                    return
        finally:
            stream.close()


def _show(pieces: Iterator[tuple[str, str]], out: TextIO) -> str:
    """Print pieces as they come; return the content text."""
    tty = out.isatty()
    content, kind_open = "", ""
    for kind, text in pieces:
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


def run_chat(gen: Generator, system: str | None, ultra_think: bool, inp: TextIO, out: TextIO) -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    out.write("MiniGPT chat. Start a line with 'think:' to reason first; 'exit' to quit.\n")
    while True:
        out.write("> ")
        out.flush()
        line = inp.readline()
        if not line or line.strip().lower() in EXIT_WORDS:
            return
        text = line.strip()
        if not text:
            continue
        thinking = ultra_think or text.lower().startswith("think:")
        if text.lower().startswith("think:"):
            text = text[len("think:") :].strip()
        history.append({"role": "user", "content": text})
        try:
            reply = _show(gen.answer(history, thinking), out)
        except MiniGPTError as exc:
            out.write(f"error: {exc}\n")
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})


def run_batch(gen: Generator, prompts: list[str], thinking: bool, out: TextIO) -> None:
    """Queue all prompts first (the engine batches them), then collect each answer in order."""
    streams = []
    for prompt in prompts:
        ids, params = gen._prompt([{"role": "user", "content": prompt}], thinking)
        streams.append((prompt, ids, gen.engine.generate(ids, params)))
    for prompt, _, stream in streams:
        parser = OutputParser(gen.tokenizer, thinking=thinking, parse_tools=False)
        segments = []
        for event in stream:
            if event.token_id is not None:
                segments += parser.push(event.token_id)
        segments += parser.finish()
        reasoning = "".join(s.text for s in segments if isinstance(s, Reasoning))
        content = "".join(s.text for s in segments if isinstance(s, Content))
        row = {"prompt": prompt, "output": content} | ({"reasoning": reasoning} if thinking else {})
        out.write(json.dumps(row, ensure_ascii=False) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from minigpt_core.checkpoint import DEMO_MODEL_DIR, load_checkpoint, resolve_device
    from minigpt_core.engine import Engine

    try:
        params = SamplingParams(
            max_new_tokens=args.max_length, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        )
        model, tokenizer = load_checkpoint(args.model_path or DEMO_MODEL_DIR, resolve_device(args.device))
        params.validate(model.config.vocab_size)
        prompts = _batch_prompts(args) if args.mode == "batch" else []
    except (MiniGPTError, OSError) as exc:
        print(f"minigpt-generate: {exc}", file=sys.stderr)
        return 2
    slots, queued = max(1, min(16, len(prompts))), max(64, len(prompts))
    with Engine(model, max_num_seqs=slots, max_queued=queued, output_vocab=tokenizer.vocab_size) as engine:
        gen = Generator(engine, tokenizer, params)
        if args.mode == "chat":
            run_chat(gen, args.system, args.ultra_think, sys.stdin, sys.stdout)
        elif args.mode == "single":
            prompt = args.prompt if args.prompt is not None else sys.stdin.read()
            messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
                {"role": "user", "content": prompt}
            ]
            _show(gen.answer(messages, args.ultra_think), sys.stdout)
        else:
            run_batch(gen, prompts, args.ultra_think, sys.stdout)
    return 0


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

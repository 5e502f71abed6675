"""Readers for the minimind JSONL formats and the tokenized memmap shard cache.

What it is: parsing of one JSONL line per format (pretrain `{"text"}`, SFT `{"conversations"}`, DPO
`{"chosen", "rejected"}`; pretraining also reads plain `.txt` files, see training.plaintext), their tokenization
(pretrain: document + `<|endoftext|>`; SFT: the chat template with its assistant-only loss mask), and
`open_shard(path, ...)`, which tokenizes a file once into uint16/uint32 memmaps cached next to the data (keyed by
tokenizer fingerprint, template, file size and mtime) and then reads lazily.
Bad lines are counted and reported as `file:line: reason`; only more than `max_bad_fraction` of them is fatal.
What it is not: batching, packing or shuffling (`training.loader`), nor the loss.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from minigpt_core import chat_template
from minigpt_core.errors import MiniGPTError
from minigpt_core.tokenizer import EOT_ID, Tokenizer
from training.errors import DataError
from training.plaintext import is_text_file, iter_text_pieces

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MAX_REPORTED_BAD_LINES = 20
_FLUSH_TOKENS = 1 << 20
_FORMAT_KEYS = {"pretrain": "text", "sft": "conversations", "dpo": "chosen"}


class BadRecord(ValueError):
    """One JSONL line that cannot be used; the message says why."""


def detect_format(path: Path, max_lines: int = 50) -> str | None:
    """The format ("pretrain", "sft" or "dpo") of the first parsable lines of `path`, or None.

    A plain-text file (`.txt`) is pretraining text.
    """
    if is_text_file(path):
        return "pretrain"
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i >= max_lines:
                break
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):  # also a 5,000-digit integer, or nesting deeper than the stack
                continue
            if isinstance(obj, dict):
                for fmt, key in _FORMAT_KEYS.items():
                    if key in obj:
                        return fmt
    return None


def iter_lines(path: Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, object, error) for each non-blank line, streaming (the file never sits in RAM)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield lineno, None, "not valid UTF-8"
                continue
            except json.JSONDecodeError as exc:
                yield lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            except ValueError as exc:  # e.g. an integer longer than Python's 4,300-digit conversion limit
                yield lineno, None, f"invalid JSON ({str(exc).split(':')[0]})"
                continue
            except RecursionError:
                yield lineno, None, "invalid JSON (nested too deeply)"
                continue
            if not isinstance(obj, dict):
                yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield lineno, obj, None


def pretrain_tokens(obj: dict[str, Any], tokenizer: Tokenizer) -> tuple[list[int], None]:
    text = obj.get("text")
    if not isinstance(text, str):
        raise BadRecord('missing string field "text"')
    if not text.strip():
        raise BadRecord('"text" is empty')
    return [*tokenizer.encode(text), EOT_ID], None


def normalize_conversation(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """minimind conversation → (OpenAI-style messages, tools). Accepts JSON-string `tools` and `tool_calls`."""
    if not isinstance(messages, list) or not messages:
        raise BadRecord('"conversations" must be a non-empty list of messages')
    out: list[dict[str, Any]] = []
    tools: list[dict[str, Any]] | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRecord(f"message {i} is not an object")
        msg = dict(message)
        if "tools" in msg:
            found = _maybe_json(msg.pop("tools"), f"message {i} tools")
            if found:
                if not isinstance(found, list):
                    raise BadRecord(f"message {i}: tools must be a list")
                tools = [*(tools or []), *(_wrap_tool(t) for t in found)]
        if msg.get("tool_calls"):
            calls = _maybe_json(msg["tool_calls"], f"message {i} tool_calls")
            if not isinstance(calls, list):
                raise BadRecord(f"message {i}: tool_calls must be a list")
            msg["tool_calls"] = [_wrap_call(call, i) for call in calls]
        elif "tool_calls" in msg:
            del msg["tool_calls"]
        out.append(msg)
    return out, tools


def _maybe_json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else None
        except json.JSONDecodeError as exc:
            raise BadRecord(f"{what}: not valid JSON ({exc.msg})") from exc
    return value


def _wrap_tool(tool: Any) -> Any:
    """A bare function schema `{"name", "parameters"}` → OpenAI's `{"type": "function", "function": ...}`."""
    if isinstance(tool, dict) and "function" not in tool and "name" in tool:
        return {"type": "function", "function": tool}
    return tool


def _wrap_call(call: Any, index: int) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise BadRecord(f"message {index}: a tool call is not an object")
    if "function" in call:
        return call
    if "name" not in call:
        raise BadRecord(f"message {index}: a tool call has no name")
    args = call.get("arguments", {})
    return {
        "type": "function",
        "function": {"name": call["name"], "arguments": args if isinstance(args, str) else json.dumps(args)},
    }


def render_conversation(messages: Any, tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids and the per-token loss mask (True on assistant tokens, `<|im_end|>` included)."""
    msgs, tools = normalize_conversation(messages)
    try:
        rendered = chat_template.render(msgs, tools, tokenizer=tokenizer)
    except MiniGPTError as exc:
        raise BadRecord(str(exc)) from exc
    ids, mask = list(rendered.ids), [bool(m) for m in rendered.mask]
    if not any(mask):
        raise BadRecord("no assistant tokens to learn from")
    return ids, mask


def sft_tokens(obj: dict[str, Any], tokenizer: Tokenizer) -> tuple[list[int], list[bool]]:
    if "conversations" not in obj:
        raise BadRecord('missing field "conversations"')
    return render_conversation(obj["conversations"], tokenizer)


def dpo_pair(obj: dict[str, Any], tokenizer: Tokenizer) -> tuple[tuple[list[int], list[bool]], ...]:
    """(chosen ids, mask), (rejected ids, mask) of one DPO record; the DPO stage builds on this."""
    if "chosen" not in obj or "rejected" not in obj:
        raise BadRecord('a DPO record needs "chosen" and "rejected"')
    return render_conversation(obj["chosen"], tokenizer), render_conversation(obj["rejected"], tokenizer)


_ENCODERS = {"pretrain": pretrain_tokens, "sft": sft_tokens}


@dataclass
class TokenShard:
    """One tokenized file: documents `tokens[offsets[i]:offsets[i+1]]` (memmaps, read lazily)."""

    path: Path  # the source JSONL
    cache_dir: Path
    tokens: np.ndarray
    mask: np.ndarray | None  # uint8, 1 = learn this token as a target; None = learn everything
    offsets: np.ndarray  # int64, n_docs + 1
    meta: dict[str, Any]

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def doc_lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Tokens (and mask) of document i, optionally a [start, stop) slice of it."""
        lo, hi = int(self.offsets[i]), int(self.offsets[i + 1])
        a, b = lo + start, hi if stop is None else min(hi, lo + stop)
        return self.tokens[a:b], None if self.mask is None else self.mask[a:b]


def cache_key(path: Path, mode: str, tokenizer: Tokenizer) -> str:
    st = path.stat()
    template = Path(chat_template.__file__).read_bytes() if mode != "pretrain" else b""
    parts = [str(FORMAT_VERSION), mode, tokenizer.fingerprint(), str(st.st_size), str(st.st_mtime_ns)]
    digest = hashlib.sha256("|".join(parts).encode() + hashlib.sha256(template).digest())
    return digest.hexdigest()[:16]


def _cache_roots(path: Path) -> list[Path]:
    env = os.environ.get("MINIGPT_CACHE_DIR")
    if env:
        return [Path(env) / "tokens"]
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return [path.resolve().parent / ".minigpt-cache", xdg / "minigpt" / "tokens"]


def open_shard(path: str | Path, mode: str, tokenizer: Tokenizer, max_bad_fraction: float = 0.05) -> TokenShard:
    """Tokenize `path` once (cached) and open it as memmaps."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"{src}: data file not found")
    name = f"{src.name}.{mode}.{cache_key(src, mode, tokenizer)}"
    roots = _cache_roots(src)
    for root in roots:
        if (root / name / "meta.json").is_file():
            shard = _load_shard(src, root / name)
            _report_cached(shard)
            return shard
    for root in roots:
        try:
            root.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        except OSError:
            continue
        try:
            _build_shard(src, mode, tokenizer, tmp, max_bad_fraction)
            try:
                os.replace(tmp, root / name)
            except OSError:  # another process won the race; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return _load_shard(src, root / name)
    raise DataError(f"{src}: no writable cache directory (tried {', '.join(map(str, roots))})")


Encoded = tuple[list[int], list[bool] | None]


def _encoded_records(src: Path, mode: str, tokenizer: Tokenizer) -> Iterator[tuple[int, int, Encoded | BadRecord]]:
    """(line, lines it accounts for, token ids and mask or the reason it is bad) for each record of `src`."""
    if is_text_file(src):
        if mode != "pretrain":
            raise DataError(f"{src}: a plain-text file is pretraining data; --mode {mode} reads JSONL")
        for piece in iter_text_pieces(src):
            if piece.text is None:
                yield piece.line, piece.n_lines, BadRecord(piece.error or "unreadable line")
            else:
                ids = tokenizer.encode(piece.text) if piece.text.strip() else []
                yield piece.line, piece.n_lines, ([*ids, EOT_ID] if piece.ends_document else ids, None)
        return
    encode = _ENCODERS[mode]
    for lineno, obj, error in iter_lines(src):
        try:
            if obj is None:
                raise BadRecord(error or "unreadable line")
            try:
                result: Encoded | BadRecord = encode(obj, tokenizer)
            except RecursionError as exc:  # parsable, yet too deep for the renderer (e.g. nested tool args)
                raise BadRecord("nested too deeply") from exc
        except BadRecord as exc:
            result = exc
        yield lineno, 1, result


def _build_shard(src: Path, mode: str, tokenizer: Tokenizer, out: Path, max_bad_fraction: float) -> None:
    if mode not in _ENCODERS:
        raise DataError(f"cannot tokenize {mode!r} data (only {', '.join(_ENCODERS)})")
    dtype = np.uint16 if tokenizer.vocab_size <= 1 << 16 else np.uint32
    offsets, bad, total = array("q", [0]), [], 0
    tok_buf: list[int] = []
    mask_buf: list[bool] = []
    with open(out / "tokens.bin", "wb") as tok_fh, open(out / "mask.bin", "wb") as mask_fh:
        for lineno, n_lines, result in _encoded_records(src, mode, tokenizer):
            total += n_lines
            if isinstance(result, BadRecord):
                bad.append({"line": lineno, "reason": str(result)})
                if len(bad) <= MAX_REPORTED_BAD_LINES:
                    logger.warning("%s:%d: skipped: %s", src, lineno, result)
                continue
            ids, mask = result
            tok_buf.extend(ids)
            mask_buf.extend(mask if mask is not None else [True] * len(ids))
            offsets.append(offsets[-1] + len(ids))
            if len(tok_buf) >= _FLUSH_TOKENS:
                tok_fh.write(np.asarray(tok_buf, dtype=dtype).tobytes())
                mask_fh.write(np.asarray(mask_buf, dtype=np.uint8).tobytes())
                tok_buf, mask_buf = [], []
        tok_fh.write(np.asarray(tok_buf, dtype=dtype).tobytes())
        mask_fh.write(np.asarray(mask_buf, dtype=np.uint8).tobytes())
    _check_bad_lines(src, bad, total, max_bad_fraction)
    if mode == "pretrain":
        (out / "mask.bin").unlink()
    np.save(out / "offsets.npy", np.frombuffer(offsets, dtype=np.int64))
    meta = {
        "source": str(src.resolve()),
        "mode": mode,
        "dtype": np.dtype(dtype).name,
        "lines": total,
        "docs": len(offsets) - 1,
        "tokens": offsets[-1],
        "bad_lines": len(bad),
        "bad_examples": bad[:100],
        "tokenizer": tokenizer.fingerprint(),
        "format_version": FORMAT_VERSION,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    logger.info("tokenized %s: %d documents, %d tokens, %d bad lines", src, meta["docs"], offsets[-1], len(bad))


def _check_bad_lines(src: Path, bad: list[dict[str, Any]], total: int, max_bad_fraction: float) -> None:
    good = total - len(bad)
    if bad:
        logger.warning("%s: %d of %d lines skipped as bad", src, len(bad), total)
    if good == 0:
        first = f"; first: {src}:{bad[0]['line']}: {bad[0]['reason']}" if bad else ""
        raise DataError(f"{src}: no usable lines ({total} lines){first}")
    if len(bad) > max_bad_fraction * total:
        examples = "; ".join(f"{src}:{b['line']}: {b['reason']}" for b in bad[:3])
        raise DataError(
            f"{src}: {len(bad)} of {total} lines are bad ({100 * len(bad) / total:.1f}% > "
            f"{100 * max_bad_fraction:g}% allowed); first: {examples}"
        )


def _load_shard(src: Path, cache_dir: Path) -> TokenShard:
    try:
        meta = json.loads((cache_dir / "meta.json").read_text(encoding="utf-8"))
        offsets = np.load(cache_dir / "offsets.npy")
        dtype = np.dtype(meta["dtype"])
        n = int(offsets[-1])
        tokens = _memmap(cache_dir / "tokens.bin", dtype, n)
        mask_path = cache_dir / "mask.bin"
        mask = _memmap(mask_path, np.dtype(np.uint8), n) if mask_path.exists() else None
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{cache_dir}: corrupt token cache ({exc}); delete it to rebuild") from exc
    return TokenShard(src, cache_dir, tokens, mask, offsets, meta)


def _memmap(path: Path, dtype: np.dtype, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n,))


def _report_cached(shard: TokenShard) -> None:
    bad = shard.meta.get("bad_lines", 0)
    if bad:
        examples = shard.meta.get("bad_examples", [])[:3]
        where = ", ".join(f"{shard.path}:{b['line']}" for b in examples)
        logger.warning("%s: %d bad lines were skipped when it was tokenized (e.g. %s)", shard.path, bad, where)

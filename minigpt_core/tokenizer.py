"""The MiniGPT tokenizer: a byte-level BPE (HF `tokenizers`) with nine special tokens at fixed ids 0..8.

What it is: training (`train_tokenizer`), loading/saving `tokenizer.json`, encode/decode, and the per-token byte
table that grammar engines and bits-per-byte metrics need.

What it is not: the chat layout (see `chat_template.py`), nor the HF `tokenizer_config.json`, which carries the
chat template and is written with the rest of a checkpoint (`checkpoint.write_tokenizer_config`). Only the chat
template emits special tokens: `Tokenizer.encode` treats every special string in its input as plain text, so user
text can never forge a turn.

Pre-tokenisation deviates on purpose from GPT-2's ByteLevel regex: we split with the Qwen2 pattern (digits one by
one, newlines kept together) and then map bytes with ByteLevel(use_regex=False). With GPT-2's pattern "\\n\\n"
tokenises differently at the end of a prompt ("</think>\\n\\n") than before content in training data, which is a
train/serve mismatch at exactly the chat-template boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from minigpt_core.errors import TokenizerError

logger = logging.getLogger(__name__)

SPECIAL_TOKENS: list[str] = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
]
EOT_ID = 0
IM_START_ID = 1
IM_END_ID = 2
THINK_ID = 3
THINK_END_ID = 4
TOOL_CALL_ID = 5
TOOL_CALL_END_ID = 6
TOOL_RESPONSE_ID = 7
TOOL_RESPONSE_END_ID = 8
NUM_SPECIAL = 9

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"  # written by checkpoint.write_tokenizer_config

# Qwen2's split pattern: contractions, letters (with one leading non-letter), single digits, punctuation runs,
# newline runs, then other whitespace.
SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by ByteLevel."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


_UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}


def _new_backend() -> HFTokenizer:
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(  # type: ignore[assignment]
        [
            pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()  # type: ignore[assignment]
    return tok


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (specials included); deterministic for the same input."""
    if vocab_size < NUM_SPECIAL + 256:
        raise TokenizerError(
            f"vocab_size must be at least {NUM_SPECIAL + 256} (specials + 256 bytes), got {vocab_size}"
        )
    backend = _new_backend()
    trainer = trainers.BpeTrainer(  # type: ignore[call-arg]
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(backend, source="<trained>")


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; checkpoints are read by other users (e.g. a container's)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Tokenizer:
    """A byte-level BPE whose ids 0..8 are the fixed special tokens; see the module docstring."""

    def __init__(self, backend: HFTokenizer, *, source: str = "<memory>") -> None:
        for i, tok in enumerate(SPECIAL_TOKENS):
            if backend.id_to_token(i) != tok:
                raise TokenizerError(
                    f"{source}: token {i} is {backend.id_to_token(i)!r}, expected the fixed special {tok!r}"
                )
        self._source = source
        # Canonical JSON with specials recognised: what we save and what HF tools load.
        self._json = backend.to_str()
        # Our own copy for encode(): special strings in the input are ordinary text there.
        self._plain = HFTokenizer.from_str(self._json)
        self._plain.encode_special_tokens = True
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._token_bytes = [self._compute_token_bytes(backend, i) for i in range(self._vocab_size)]

    @staticmethod
    def _compute_token_bytes(backend: HFTokenizer, token_id: int) -> bytes:
        token = backend.id_to_token(token_id)
        if token is None:
            return b""
        if token_id < NUM_SPECIAL:
            return token.encode("utf-8")
        try:
            return bytes(_UNICODE_TO_BYTE[c] for c in token)
        except KeyError:  # an added non-byte-level token: its literal text
            return token.encode("utf-8")

    # ----- construction and persistence -----

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Tokenizer:
        p = Path(path)
        if not p.is_file():
            raise TokenizerError(f"tokenizer file not found: {p}")
        try:
            backend = HFTokenizer.from_file(str(p))
        except Exception as exc:  # tokenizers raises plain Exception on bad JSON / schema
            raise TokenizerError(f"cannot read tokenizer file {p}: {exc}") from exc
        return cls(backend, source=str(p))

    @classmethod
    def from_dir(cls, directory: str | os.PathLike[str]) -> Tokenizer:
        return cls.from_file(Path(directory) / TOKENIZER_FILE)

    @classmethod
    def from_json_str(cls, text: str) -> Tokenizer:
        try:
            backend = HFTokenizer.from_str(text)
        except Exception as exc:
            raise TokenizerError(f"cannot parse tokenizer JSON: {exc}") from exc
        return cls(backend)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/tokenizer.json` atomically; returns its path."""
        path = Path(directory) / TOKENIZER_FILE
        atomic_write_text(path, self._json)
        return path

    def to_json_str(self) -> str:
        return self._json

    def fingerprint(self) -> str:
        """sha256 hex of the canonical (sorted, compact) tokenizer JSON: a cache key for tokenised data."""
        canonical = json.dumps(json.loads(self._json), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    # ----- encode / decode -----

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Never returns a special id (< NUM_SPECIAL), whatever the text contains."""
        if not text:
            return []
        ids: list[int] = self._plain.encode(text, add_special_tokens=False).ids
        if any(i < NUM_SPECIAL for i in ids):  # defence in depth; the backend setting should make this impossible
            raise TokenizerError(f"{self._source}: plain-text encoding produced a special token id")
        return ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[int]]:
        """Like `encode`, plus each token's start offset (in characters) into `text`."""
        if not text:
            return [], []
        enc = self._plain.encode(text, add_special_tokens=False)
        if any(i < NUM_SPECIAL for i in enc.ids):
            raise TokenizerError(f"{self._source}: plain-text encoding produced a special token id")
        return list(enc.ids), [start for start, _ in enc.offsets]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self._plain.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes token `token_id` stands for (specials: their literal UTF-8 text)."""
        if not 0 <= token_id < self._vocab_size:
            raise TokenizerError(f"token id {token_id} out of range [0, {self._vocab_size})")
        return self._token_bytes[token_id]

    def all_token_bytes(self) -> list[bytes]:
        """`token_bytes(i)` for every id, in id order (for grammar engines and bits-per-byte)."""
        return list(self._token_bytes)

    def token_to_id(self, token: str) -> int | None:
        return self._plain.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        token = self._plain.id_to_token(token_id)
        if token is None:
            raise TokenizerError(f"token id {token_id} out of range [0, {self._vocab_size})")
        return token

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self._vocab_size}, source={self._source!r})"

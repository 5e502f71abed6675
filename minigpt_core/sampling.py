"""Sampling: the per-request `SamplingParams` and the `RequestSampler` that turns one logits row into a token.

What it is: logit bias, OpenAI presence/frequency penalties, HF repetition penalty, a constraint mask, then
greedy argmax or temperature / top-k / top-p / min-p and `torch.multinomial` with the request's own seeded
generator. Every operation works on one row, so a request's tokens never depend on what else is in the batch.

What it is not: it knows nothing about text, stop strings or end of turn (the engine checks `stop_token_ids`
and EOS, the output parser checks stop strings), and it does not build constraint masks (see constraints.py).

Log-probabilities (`SampledToken.logprob`, `top_logprobs`) are taken from `log_softmax` of the RAW logits the
model produced, before bias, penalties, mask and temperature: they describe the model, not the sampler, which
is what OpenAI clients and RLHF rollouts compare across requests.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from minigpt_core.errors import InvalidRequest, MiniGPTError

MAX_TOP_LOGPROBS = 20
# Temperatures below this sample greedily: float32 logits divided by ~1e-38 overflow to inf, and softmax then
# gives NaN. At 1e-5 the gap between the two best logits is already multiplied by 1e5, so nothing else would
# ever be drawn anyway.
GREEDY_BELOW_TEMPERATURE = 1e-5
# A repetition penalty divides (or multiplies) logits: 1e-45 turns a positive logit into inf and softmax into NaN.
# [1/100, 100] already moves any logit the model produces past every other, so nothing is lost by the bound.
REPETITION_PENALTY_RANGE = (0.01, 100.0)


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    """How to pick tokens for one request. Internal names; server/protocol.py maps the OpenAI wire names."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # 0 (or anything below GREEDY_BELOW_TEMPERATURE) = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off; a value at or past the vocabulary keeps every token, so it is off too
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF semantics, over prompt + generated ids
    presence_penalty: float = 0.0  # OpenAI semantics, over generated ids only
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    # Validated, but read by nothing: the think budget travels as `prompting.ChatRequest.max_thinking_tokens`, which
    # minigpt_core.prompting turns into a `ThinkBudget` constraint (the engine never builds one from this field).
    max_thinking_tokens: int | None = None
    # never sampled (e.g. the tool-call tag when a request offers no tools); cheap, keeps the fast path
    banned_token_ids: tuple[int, ...] = ()

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE

    def validate(self, vocab_size: int) -> None:
        """Raise `InvalidRequest` (with `param` in OpenAI wire terms) for any out-of-range value."""
        _check_int(self.max_new_tokens, "max_tokens", low=1)
        _check_float(self.temperature, "temperature", 0.0, 2.0)
        _check_float(self.top_p, "top_p", 0.0, 1.0)
        if self.top_p <= 0.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}", param="top_p")
        _check_int(self.top_k, "top_k", low=0)
        _check_float(self.min_p, "min_p", 0.0, 1.0)
        _check_float(self.presence_penalty, "presence_penalty", -2.0, 2.0)
        _check_float(self.frequency_penalty, "frequency_penalty", -2.0, 2.0)
        _check_float(self.repetition_penalty, "repetition_penalty", *REPETITION_PENALTY_RANGE)
        _check_int(self.top_logprobs, "top_logprobs", low=0, high=MAX_TOP_LOGPROBS)
        if self.top_logprobs > 0 and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        for token_id in self.banned_token_ids:
            _check_token_id(token_id, vocab_size, "banned_token_ids")
        for token_id, bias in self.logit_bias:
            _check_token_id(token_id, vocab_size, "logit_bias")
            _check_float(bias, "logit_bias", -100.0, 100.0)
        for token_id in self.stop_token_ids:
            _check_token_id(token_id, vocab_size, "stop_token_ids")
        if self.seed is not None:
            _check_int(self.seed, "seed")
        if self.max_thinking_tokens is not None:
            _check_int(self.max_thinking_tokens, "max_thinking_tokens", low=0)


def _check_float(value: object, param: str, low: float, high: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidRequest(f"{param} must be a finite number, got {value!r}", param=param)
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high}, got {value}", param=param)


def _check_int(value: object, param: str, *, low: int | None = None, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{param} must be an integer, got {value!r}", param=param)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"{param} must be {bounds}, got {value}", param=param)


def _check_token_id(token_id: object, vocab_size: int, param: str) -> None:
    if isinstance(token_id, bool) or not isinstance(token_id, int) or not 0 <= token_id < vocab_size:
        raise InvalidRequest(f"{param}: token id {token_id!r} is outside the vocabulary", param=param)


@dataclass(frozen=True, slots=True)
class SampledToken:
    token_id: int
    logprob: float  # log_softmax of the raw logits, see the module docstring
    top_logprobs: list[tuple[int, float]] = field(default_factory=list)


class RequestSampler:
    """Per-request sampling state: params, a seeded generator, and the ids the penalties look at.

    Call `sample` on each step's logits row, then `observe` with the token that was actually appended
    (usually the sampled one; a caller that forces a token, e.g. `</think>` at a thinking budget, observes that).
    """

    def __init__(self, params: SamplingParams, prompt_ids: Iterable[int] = ()) -> None:
        self.params = params
        # A random seed is drawn when none is given, so every request is still reproducible from its seed.
        self.seed: int = params.seed if params.seed is not None else secrets.randbits(63)
        self._generator: torch.Generator | None = None
        self.counts: dict[int, int] = {}  # generated token -> times generated (presence/frequency)
        self.seen: set[int] = set(prompt_ids)  # prompt + generated ids (repetition_penalty)

    def observe(self, token_id: int) -> None:
        self.counts[token_id] = self.counts.get(token_id, 0) + 1
        self.seen.add(token_id)

    def _generator_for(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(self.seed % 2**64)
        return self._generator

    def sample(self, logits_row: torch.Tensor, allowed: torch.Tensor | None = None) -> SampledToken:
        """Pick the next token from one row of logits (V,); `allowed` (V,) bool masks out the rest."""
        if logits_row.dim() != 1:
            raise ValueError(f"logits_row must be 1-D (V,), got shape {tuple(logits_row.shape)}")
        raw = logits_row.float()
        logits = self._adjusted_logits(raw)  # (V,)
        if allowed is not None:
            logits = logits.masked_fill(~allowed.to(device=logits.device, dtype=torch.bool), -math.inf)
        if not bool(torch.isfinite(logits).any()):
            raise MiniGPTError("no token can be sampled: the logits are not finite or the mask excludes every token")
        if self.params.greedy:
            token_id = int(torch.argmax(logits).item())  # ties -> first (lowest) index
        else:
            probs = self._filtered_probs(logits)
            token_id = int(torch.multinomial(probs, 1, generator=self._generator_for(probs.device)).item())
        return self._with_logprobs(raw, token_id)

    def _adjusted_logits(self, raw: torch.Tensor) -> torch.Tensor:
        p = self.params
        logits = raw.clone()
        if p.banned_token_ids:
            logits[list(p.banned_token_ids)] = -math.inf
        if p.logit_bias:
            ids = torch.tensor([t for t, _ in p.logit_bias], dtype=torch.long, device=raw.device)
            bias = torch.tensor([b for _, b in p.logit_bias], dtype=logits.dtype, device=raw.device)
            logits.index_add_(0, ids, bias)
        if p.repetition_penalty != 1.0 and self.seen:
            ids = torch.tensor(sorted(self.seen), dtype=torch.long, device=raw.device)
            picked = logits[ids]
            picked = torch.where(picked > 0, picked / p.repetition_penalty, picked * p.repetition_penalty)
            logits[ids] = picked
        if (p.presence_penalty != 0.0 or p.frequency_penalty != 0.0) and self.counts:
            ids = torch.tensor(list(self.counts), dtype=torch.long, device=raw.device)
            counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype, device=raw.device)
            logits[ids] -= p.presence_penalty + p.frequency_penalty * counts
        return logits

    def _filtered_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Temperature, then top-k, top-p and min-p; returns probabilities (V,) with at least one > 0."""
        p = self.params
        logits = logits / p.temperature
        if 0 < p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        if p.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True, stable=True)
            before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass strictly above each token
            drop_sorted = before >= p.top_p  # keeps the smallest prefix reaching top_p
            drop_sorted[0] = False  # the best token always stays (a top_p of 1e-300 is 0 in float32)
            drop = torch.zeros_like(drop_sorted).scatter(0, order, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
        if p.min_p > 0.0:
            probs = probs.masked_fill(probs < p.min_p * probs.max(), 0.0)
        return probs

    def _with_logprobs(self, raw: torch.Tensor, token_id: int) -> SampledToken:
        logprobs = torch.log_softmax(raw, dim=-1)
        top: list[tuple[int, float]] = []
        k = min(self.params.top_logprobs, raw.numel())
        if k > 0:
            values, ids = torch.topk(logprobs, k)
            top = [(int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
        return SampledToken(token_id=token_id, logprob=float(logprobs[token_id].item()), top_logprobs=top)


def sample_batch(
    logits: torch.Tensor, samplers: Sequence[RequestSampler], allowed: Sequence[torch.Tensor | None]
) -> list[SampledToken]:
    """Sample one token per row of `logits` (B, V); row b uses samplers[b] and allowed[b]. Loops on purpose."""
    if logits.dim() != 2 or logits.shape[0] != len(samplers) or len(samplers) != len(allowed):
        raise ValueError(f"logits {tuple(logits.shape)} must be (B, V) with B = {len(samplers)} samplers and masks")
    return [sampler.sample(logits[b], allowed[b]) for b, sampler in enumerate(samplers)]


def is_simple(params: SamplingParams) -> bool:
    """True when a request's tokens can be drawn by `sample_rows` from per-row tensors: the batched fast path.

    Temperature, top-k, top-p, min-p, logit bias, banned ids, the seed and the chosen token's logprob all live in
    a `SamplingTable`. Penalties (they depend on the ids generated so far) and top_logprobs keep the per-row
    `RequestSampler`.
    """
    return (
        params.top_logprobs == 0
        and params.presence_penalty == 0.0
        and params.frequency_penalty == 0.0
        and params.repetition_penalty == 1.0
    )


class SamplingTable:
    """Per-row sampling parameters as device tensors, so a batch is sampled with no host sync and fixed shapes.

    Row r holds one request's parameters (the engine uses row = KV slot): `bias` (rows, V) is its logit_bias
    with banned ids at -inf, `inv_temp` 1/temperature (1 for greedy rows), `top_k` (V when off), `top_p`,
    `min_p`, and `greedy`. A captured decode graph reads the first b rows as views; `gather(rows)` copies rows
    out for a compact batch. Writing a row costs a few tiny device writes, once per request.
    """

    def __init__(self, rows: int, vocab: int, device: torch.device | str) -> None:
        self.vocab = vocab
        self.bias = torch.zeros((rows, vocab), dtype=torch.float32, device=device)
        self.inv_temp = torch.ones(rows, dtype=torch.float32, device=device)
        self.top_k = torch.full((rows,), vocab, dtype=torch.long, device=device)
        self.top_p = torch.ones(rows, dtype=torch.float32, device=device)
        self.min_p = torch.zeros(rows, dtype=torch.float32, device=device)
        self.greedy = torch.ones(rows, dtype=torch.bool, device=device)
        self.seed = torch.zeros(rows, dtype=torch.long, device=device)  # 32 bits; used where `seeded`
        self.seeded = torch.zeros(rows, dtype=torch.bool, device=device)

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return (self.bias, self.inv_temp, self.top_k, self.top_p, self.min_p, self.greedy, self.seed, self.seeded)

    def set_row(self, row: int, params: SamplingParams) -> None:
        v = self.vocab
        self.bias[row].zero_()
        bias = [(t, b) for t, b in params.logit_bias if t < v]
        if bias:
            ids = torch.tensor([t for t, _ in bias], dtype=torch.long)
            values = torch.tensor([b for _, b in bias], dtype=torch.float32)
            self.bias[row].index_add_(0, ids.to(self.bias.device), values.to(self.bias.device))
        banned = [t for t in params.banned_token_ids if t < v]
        if banned:
            self.bias[row, torch.tensor(banned, dtype=torch.long).to(self.bias.device)] = -math.inf
        self.inv_temp[row] = 1.0 if params.greedy else 1.0 / params.temperature
        self.top_k[row] = params.top_k if 0 < params.top_k < v else v
        self.top_p[row] = params.top_p
        self.min_p[row] = params.min_p
        self.greedy[row] = params.greedy
        self.seeded[row] = params.seed is not None
        self.seed[row] = (params.seed or 0) & 0xFFFFFFFF

    def copy_row(self, dst: int, src: int) -> None:
        for t in self._tensors():
            t[dst] = t[src]

    def view(self, b: int) -> SamplingTable:
        """The first b rows, as views (what a captured graph reads)."""
        out = SamplingTable.__new__(SamplingTable)
        out.vocab = self.vocab
        (out.bias, out.inv_temp, out.top_k, out.top_p, out.min_p, out.greedy, out.seed, out.seeded) = (
            t[:b] for t in self._tensors()
        )
        return out

    def gather(self, rows: torch.Tensor) -> SamplingTable:
        out = SamplingTable.__new__(SamplingTable)
        out.vocab = self.vocab
        (out.bias, out.inv_temp, out.top_k, out.top_p, out.min_p, out.greedy, out.seed, out.seeded) = (
            t.index_select(0, rows) for t in self._tensors()
        )
        return out


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """An integer hash of 32-bit values held in int64 (products stay below 2**63: no overflow)."""
    for _ in range(3):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def counter_exponential(seed: torch.Tensor, counter: torch.Tensor, vocab: int) -> torch.Tensor:
    """Exp(1) noise (n, vocab) that depends only on (seed, counter, token id): a seeded request draws the same
    tokens whatever its batch, its slot, or how many decode steps one call runs (counter = tokens drawn so far)."""
    ids = torch.arange(vocab, device=seed.device)
    row = _mix32((seed & 0xFFFFFFFF) ^ _mix32((counter & 0xFFFFFFFF) + 0x9E3779B))  # (n,)
    bits = _mix32((row[:, None] * 0x2545F49 + ids[None]) & 0xFFFFFFFF)  # (n, vocab)
    uniform = (bits.float() + 0.5) / 4294967296.0  # (0, 1)
    return -torch.log(uniform)


def sample_rows(
    logits: torch.Tensor,
    table: SamplingTable,
    any_sampled: bool,
    counters: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one token per row of `logits` (n, V) with row r's parameters in `table` row r, on the device.

    Returns (token ids (n,) long, their logprobs (n,) float32, ok (n,) bool). The logprob is of the raw logits,
    as `RequestSampler` reports it. `ok` is False for a row whose logits hold NaN or whose bias leaves nothing
    to sample: such a row's token is meaningless and the caller ends that request alone, while the rest of
    the batch is unaffected. Fixed shapes and no host syncs, so a CUDA graph can capture it. With
    `any_sampled` False every row is taken greedily (argmax; ties go to the lowest id). Sampled rows draw with
    the exponential trick (argmax of p / E, E ~ Exp(1)), which picks id i with probability p_i; E comes from the
    global generator, or, for seeded rows when `counters` (n,) (tokens each row has drawn so far) is given, from
    `counter_exponential` of the row's seed, so seeded output replays exactly.
    """
    logits = logits.float()
    logprobs = logits.log_softmax(dim=-1)
    adjusted = logits + table.bias
    ok = torch.isfinite(adjusted).any(dim=-1) & ~torch.isnan(logits).any(dim=-1)
    tokens = adjusted.argmax(dim=-1)
    if any_sampled:
        x = adjusted * table.inv_temp[:, None]
        ordered, order = x.sort(dim=-1, descending=True, stable=True)
        ranks = torch.arange(x.shape[-1], device=x.device)[None]
        keep = ranks < table.top_k[:, None]
        probs = ordered.masked_fill(~keep, -math.inf).softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass strictly above each token: keep the prefix reaching top_p
        keep &= (before < table.top_p[:, None]) | (ranks == 0)
        keep &= probs >= table.min_p[:, None] * probs[:, :1]
        noise = torch.empty_like(probs).exponential_()
        if counters is not None:
            seeded = counter_exponential(table.seed, counters, probs.shape[-1]).gather(1, order)  # follow the sort
            noise = torch.where(table.seeded[:, None], seeded, noise)
        noise = noise.clamp_min_(1e-20)
        pick = (probs.masked_fill(~keep, 0.0) / noise).argmax(dim=-1)
        sampled = order.gather(1, pick[:, None])[:, 0]
        tokens = torch.where(table.greedy, tokens, sampled)
    return tokens, logprobs.gather(1, tokens[:, None])[:, 0], ok


def sample_simple_batch(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """Sample one token per row of `logits` (n, V) for rows where `is_simple` holds; returns ids (n,) on the device.

    A convenience over `SamplingTable` + `sample_rows` for callers that hold `SamplingParams`, not a table.
    Raises MiniGPTError when a row cannot be sampled (NaN logits, or every id banned).
    """
    table = SamplingTable(len(params), logits.shape[-1], logits.device)
    for row, p in enumerate(params):
        table.set_row(row, p)
    tokens, _, ok = sample_rows(logits, table, any(not p.greedy for p in params))
    if not bool(ok.all()):
        raise MiniGPTError("no token can be sampled: the logits are not finite or every token is excluded")
    return tokens

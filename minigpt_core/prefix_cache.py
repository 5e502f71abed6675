"""Which KV-cache slots hold which token prefixes: the index behind automatic prefix caching.

What it is: a slot's "content" is the list of token ids whose keys/values sit, valid, at positions 0..n-1 of
that slot (a finished request's prompt and answer, or a running request's prompt once prefilled). Contents
are indexed by a chain of hashes over BLOCK-token blocks, so finding the longest cached prefix of a new prompt
costs one dict lookup per block; a hit is checked token by token before it is trusted (a hash collision can
never hand one request another's keys). The scheduler reuses a hit by taking that free slot as it is, or by
copying the prefix's keys/values out of a running slot, and prefills only the rest of the prompt.

What it is not: it owns no tensors and moves no data (scheduler.py does); contents are not paged: a slot is
reused whole, and its content is forgotten when a new request takes it.
"""

from __future__ import annotations

BLOCK = 16


def _chain(tokens: list[int], blocks: int) -> list[int]:
    out: list[int] = []
    h = 0
    for i in range(blocks):
        h = hash((h, *tokens[i * BLOCK : (i + 1) * BLOCK]))
        out.append(h)
    return out


class PrefixIndex:
    def __init__(self) -> None:
        self._slots_by_hash: dict[int, dict[int, None]] = {}  # block-chain hash -> slots (insertion ordered)
        self._content: dict[int, list[int]] = {}  # slot -> its valid tokens
        self._hashes: dict[int, list[int]] = {}  # slot -> the chain hashes it is listed under

    def content(self, slot: int) -> list[int]:
        return self._content.get(slot, [])

    def register(self, slot: int, tokens: list[int]) -> None:
        """`slot` now holds valid keys/values for `tokens` (only whole blocks can be matched)."""
        self.forget(slot)
        hashes = _chain(tokens, len(tokens) // BLOCK)
        if not hashes:
            return
        self._content[slot], self._hashes[slot] = list(tokens), hashes
        for h in hashes:
            self._slots_by_hash.setdefault(h, {})[slot] = None

    def forget(self, slot: int) -> None:
        """The slot's content is about to be overwritten."""
        self._content.pop(slot, None)
        for h in self._hashes.pop(slot, []):
            slots = self._slots_by_hash.get(h)
            if slots is not None:
                slots.pop(slot, None)
                if not slots:
                    del self._slots_by_hash[h]

    def match(self, tokens: list[int], limit: int, prefer: set[int] | frozenset[int] = frozenset()) -> tuple[int, int]:
        """(slot, n): the longest cached prefix of `tokens`, at most `limit` tokens, whole blocks; (-1, 0) if none.

        Among slots with the same prefix, one in `prefer` (free slots: taken without a copy) wins."""
        best: tuple[int, int] = (-1, 0)
        h = 0
        for i in range(min(limit, len(tokens)) // BLOCK):
            h = hash((h, *tokens[i * BLOCK : (i + 1) * BLOCK]))
            slots = self._slots_by_hash.get(h)
            if not slots:
                break
            n = (i + 1) * BLOCK
            chosen = next((s for s in slots if s in prefer), next(iter(slots)))
            if self._content[chosen][:n] != tokens[:n]:  # a hash collision: trust only equal tokens
                break
            best = (chosen, n)
        return best

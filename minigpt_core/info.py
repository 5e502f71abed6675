"""`minigpt-info`: print a preset's exact shape, parameter count and KV-cache cost per token.

Shows the GQA saving: bytes of KV cache per token with the preset's KV heads against full multi-head attention.
"""

from __future__ import annotations

import argparse
import json
import sys

from minigpt_core.config import PRESETS, ModelConfig, preset
from minigpt_core.errors import MiniGPTError


def describe(name: str, cfg: ModelConfig) -> dict[str, object]:
    mha = cfg.replace(n_kv_head=cfg.n_head)
    return {
        "config": name,
        "n_layer": cfg.n_layer,
        "n_embd": cfg.n_embd,
        "n_head": cfg.n_head,
        "n_kv_head": cfg.n_kv_head,
        "head_dim": cfg.head_dim,
        "ffn_dim": cfg.ffn_dim,
        "vocab_size": cfg.vocab_size,
        "max_seq_len": cfg.max_seq_len,
        "parameters": cfg.num_parameters(),
        "kv_cache_bytes_per_token_bf16": cfg.kv_cache_bytes_per_token(2),
        "kv_cache_bytes_per_token_bf16_mha": mha.kv_cache_bytes_per_token(2),
        "gqa_kv_saving": f"{cfg.n_head // cfg.n_kv_head}x",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="minigpt-info", description=__doc__)
    parser.add_argument("--config", default=None, help=f"one of {', '.join(PRESETS)} (default: all)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    try:
        names = [args.config] if args.config else list(PRESETS)
        rows = [describe(n, preset(n)) for n in names]
    except MiniGPTError as exc:
        print(f"minigpt-info: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    for r in rows:
        print(
            f"{r['config']:<7} params={r['parameters']:,}  layers={r['n_layer']} dim={r['n_embd']} "
            f"heads={r['n_head']}q/{r['n_kv_head']}kv head_dim={r['head_dim']} ffn={r['ffn_dim']} "
            f"vocab={r['vocab_size']}  KV cache/token (bf16): {r['kv_cache_bytes_per_token_bf16']:,} B "
            f"(MHA would need {r['kv_cache_bytes_per_token_bf16_mha']:,} B, GQA saves {r['gqa_kv_saving']})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

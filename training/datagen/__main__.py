"""Command line: `python -m training.datagen --out DIR [--seed 0] [--scale 1.0]` writes the synthetic corpus.

It only parses arguments, configures logging and calls `generate_corpus`; it is not a training entry point.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from training.datagen.corpus import generate_corpus


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.datagen", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed (same seed, same bytes)")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every file's record count")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.scale <= 0:
        print("error: --scale must be positive", file=sys.stderr)
        return 2
    start = time.perf_counter()
    counts = generate_corpus(args.out, seed=args.seed, scale=args.scale)
    for name, count in counts.items():
        print(f"{name}.jsonl: {count} lines")
    print(f"done in {time.perf_counter() - start:.1f} s -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput benchmark: tokens/s and MFU of MiniGPT against HF `LlamaForCausalLM` on the same card.

Both models are built from the same `ModelConfig`, trained with the same optimizer (AdamW, fused on CUDA), dtype
(bf16 autocast on CUDA, fp32 on CPU), batch and sequence length, on the same token stream. MFU uses
model FLOPs per token = 6N + 12·L·H·d_head·T over the card's datasheet bf16 dense peak; the rate of a large bf16
matmul measured in the same run is printed beside it. This is not the training loop (see loop.py), only a
measurement harness: `python -m training.bench` or `minigpt-bench train`.

`--variants` measures the throughput levers of `minigpt-train` side by side on the MiniGPT rows (synthetic and end
to end): `fused-ce` (chunked linear + cross-entropy, no full logits), `bf16-params` (bf16 weights, float32 master
weights in AdamW), `ckpt` (activation checkpointing), `max-autotune` / `autotune` (torch.compile modes, the latter
without CUDA graphs); `a+b` combines them. `--compile-cache DIR` keeps inductor's caches (and torch's portable cache
artifacts) in DIR, so a second invocation with the same DIR reports the warm first step beside the cold one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from minigpt_core.config import ModelConfig, preset
from minigpt_core.model import MiniGPT
from training.fused_ce import linear_cross_entropy
from training.precision import MasterWeights

# Datasheet dense bf16 peaks (TFLOP/s); MFU is quoted against these.
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# The levers of --variants, as minigpt-train settings (flat names); "a+b" merges two.
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "fused-ce": {"fused_ce": True},
    "bf16-params": {"param_dtype": "bfloat16"},
    "ckpt": {"activation_checkpointing": True},
    "max-autotune": {"compile_mode": "max-autotune"},
    "autotune": {"compile_mode": "max-autotune-no-cudagraphs"},
}
CACHE_ARTIFACTS = "cache_artifacts.bin"


def variant_settings(name: str) -> dict[str, Any]:
    """The minigpt-train settings of a variant name such as `fused-ce+bf16-params`; ValueError for an unknown part."""
    out: dict[str, Any] = {}
    for part in name.split("+"):
        if part not in VARIANTS:
            raise ValueError(f"unknown variant {part!r}; choose from {', '.join(VARIANTS)} (combine with +)")
        out.update(VARIANTS[part])
    return out


@dataclass
class TrainResult:
    impl: str
    config: str
    params: int
    batch_size: int
    seq_len: int
    compile: bool
    dtype: str
    tokens_per_s: float
    mfu: float | None
    step_ms: float
    compile_s: float  # the first step (compilation included), seconds
    device: str
    variant: str = "base"
    total_s: float | None = None  # the whole end-to-end run (data preparation, compilation, steps)


def device_peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_TFLOPS.items():
        if key in name:
            return peak
    return None


def matmul_tflops(device: torch.device, n: int = 8192, iters: int = 10) -> float | None:
    """The measured rate of a large bf16 matmul on this card (a practical ceiling beside the datasheet)."""
    if device.type != "cuda":
        return None
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12


def build(impl: str, cfg: ModelConfig, device: torch.device) -> torch.nn.Module:
    if impl == "minigpt":
        return MiniGPT(cfg).to(device)
    from transformers import LlamaConfig, LlamaForCausalLM  # peer only; not a runtime dependency

    hf_cfg = LlamaConfig(**{k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")})
    hf_cfg._attn_implementation = "sdpa"
    hf_model: torch.nn.Module = LlamaForCausalLM(hf_cfg)
    return hf_model.to(device)


def logits_of(impl: str, model: Any, x: torch.Tensor) -> torch.Tensor:
    return model(x) if impl == "minigpt" else model(input_ids=x, use_cache=False).logits


def bench_train(
    impl: str,
    config: str,
    device: torch.device,
    *,
    batch_size: int,
    seq_len: int,
    steps: int,
    warmup: int,
    compile: bool,
    variant: str = "base",
) -> TrainResult:
    """Model + optimizer on synthetic tokens; a `variant` (MiniGPT only) applies minigpt-train's levers."""
    cfg = preset(config).replace(max_seq_len=max(seq_len, 128))
    lever = variant_settings(variant)
    if lever and impl != "minigpt":
        raise ValueError(f"variant {variant!r} applies to the MiniGPT rows only")
    torch.manual_seed(0)
    model = build(impl, cfg, device)
    model.train()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=cuda)
    master = MasterWeights(model) if lever.get("param_dtype") == "bfloat16" else None
    trained = master.module if master is not None else model
    if lever.get("activation_checkpointing") and isinstance(trained, MiniGPT):
        trained.activation_checkpointing = True
    mode = lever.get("compile_mode")
    fwd = torch.compile(trained, mode=mode) if compile else trained
    fused_ce = bool(lever.get("fused_ce"))
    data = torch.randint(0, cfg.vocab_size, (steps + warmup, batch_size, seq_len + 1), device=device)

    def step(i: int) -> torch.Tensor:
        x, y = data[i, :, :-1], data[i, :, 1:]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            if fused_ce and isinstance(trained, MiniGPT):
                hidden = fwd(x, return_hidden=True)
                loss = linear_cross_entropy(hidden, trained.lm_head_weight, y, compile=compile) / y.numel()
            else:
                logits = logits_of(impl, fwd, x)
                loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        loss.backward()
        if master is not None:
            master.grads_to_master()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if master is not None:
            master.params_from_master()
        return loss.detach()

    t0 = time.perf_counter()
    step(0)
    if cuda:
        torch.cuda.synchronize()
    compile_s = time.perf_counter() - t0
    for i in range(1, warmup):
        step(i)
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        loss = step(i)
    float(loss)  # one host sync at the end
    elapsed = time.perf_counter() - t0
    tok_s = batch_size * seq_len * steps / elapsed
    peak = device_peak_tflops(device)
    mfu = tok_s * cfg.flops_per_token(seq_len) / (peak * 1e12) if peak else None
    n_params = cfg.num_parameters()
    return TrainResult(
        impl if variant == "base" else f"{impl} [{variant}]",
        config,
        n_params,
        batch_size,
        seq_len,
        compile,
        _dtype_label(cuda, lever),
        tok_s,
        mfu,
        1000 * elapsed / steps,
        compile_s,
        str(device),
        variant,
    )


def _dtype_label(cuda: bool, lever: dict[str, Any]) -> str:
    label = "bf16-autocast" if cuda else "fp32"
    return label + "+bf16-params" if lever.get("param_dtype") == "bfloat16" else label


def bench_e2e(
    config: str,
    device: torch.device,
    *,
    batch_size: int,
    seq_len: int,
    steps: int,
    compile: bool,
    variant: str = "base",
) -> TrainResult:
    """The real thing: `minigpt-train --mode pretrain` (bundled corpus, packed memmap loader, the training loop)
    with the settings of `variant`.

    tokens/s is taken from the loop's own metrics, skipping the first 20 steps (compilation and warm-up); the first
    step's seconds are the loop's elapsed time at step 1.
    """
    import tempfile

    from training.config import resolve_config, train_preset
    from training.loader import bundled_data_dir
    from training.pipeline import run_training

    with tempfile.TemporaryDirectory() as tmp:
        settings = train_preset(config, "pretrain")
        settings.update(
            data=str(bundled_data_dir()),
            out_dir=tmp,
            max_steps=steps,
            batch_size=batch_size,
            seq_len=seq_len,
            device=device.type,
            compile=compile,
            eval_every=10**9,
            save_every=10**9,
            keep_last=1,
            log_every=10,
            warmup_steps=10,
            **variant_settings(variant),
        )
        settings["model"] = settings["model"].replace(max_seq_len=max(seq_len, 128))
        t0 = time.perf_counter()
        run_training(resolve_config(settings))
        total_s = time.perf_counter() - t0
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    impl = "minigpt-train (e2e)" if variant == "base" else f"e2e [{variant}]"
    row = _e2e_result(impl, config, device, records, steps, batch_size, seq_len, compile, total_s)
    row.variant, row.dtype = variant, _dtype_label(device.type == "cuda", variant_settings(variant))
    return row


def bench_e2e_torchrun(
    config: str, device: torch.device, nproc: int, *, batch_size: int, seq_len: int, steps: int, compile: bool
) -> TrainResult:
    """`minigpt-train --mode pretrain` launched by torchrun on `nproc` processes (DDP; gloo on CPU, NCCL on CUDA).

    tokens/s is the loop's own global figure (all ranks' tokens), read from rank 0's metrics.jsonl after the first
    20 steps; `batch_size` is per process, as in `minigpt-train` under torchrun.
    """
    import os
    import subprocess
    import tempfile

    from training.loader import bundled_data_dir

    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
        cmd += ["-m", "training.cli", "--mode", "pretrain", "--config", config, "--data", str(bundled_data_dir())]
        cmd += ["--out", tmp, "--max-steps", str(steps), "--batch-size", str(batch_size), "--seq-len", str(seq_len)]
        cmd += ["--device", device.type, "--eval-every", str(10**9), "--save-every", str(10**9), "--keep-last", "1"]
        cmd += ["--log-every", "10", "--warmup-steps", "10", "-q", *(["--compile"] if compile else [])]
        env = {**os.environ, "NCCL_NVLS_ENABLE": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        total_s = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(f"torchrun with {nproc} processes failed: {done.stderr[-2000:]}")
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    impl = f"torchrun x{nproc} (e2e)"
    return _e2e_result(impl, config, device, records, steps, batch_size, seq_len, compile, total_s, nproc)


def _e2e_result(
    impl: str,
    config: str,
    device: torch.device,
    records: list[dict[str, Any]],
    steps: int,
    batch_size: int,
    seq_len: int,
    compile: bool,
    total_s: float,
    nproc: int = 1,
) -> TrainResult:
    """A TrainResult from a run's metrics.jsonl: global tokens/s after the first 20 steps, MFU over `nproc` cards."""
    steady = [r for r in records if r["step"] > min(20, steps // 2)]
    tok_s = statistics.mean(r["tok_per_s"] for r in steady) if steady else 0.0
    cfg = preset(config)
    peak = device_peak_tflops(device)
    mfu = tok_s * cfg.flops_per_token(seq_len) / (nproc * peak * 1e12) if peak else None
    return TrainResult(
        impl,
        config,
        cfg.num_parameters(),
        batch_size,
        seq_len,
        compile,
        "bf16-autocast" if device.type == "cuda" else "fp32",
        tok_s,
        mfu,
        1000 * nproc * batch_size * seq_len / max(tok_s, 1e-9),
        next((float(r["elapsed_s"]) for r in records if r["step"] == 1 and "elapsed_s" in r), total_s),
        str(device),
        total_s=total_s,
    )


def use_compile_cache(directory: str) -> None:
    """Keep inductor's on-disk caches (FX graphs, AOT autograd) in `directory` and load the portable cache artifacts
    a previous run saved there (`torch.compiler.load_cache_artifacts`), so a second run starts warm."""
    import os

    root = Path(directory).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(root / "inductor")
    os.environ["TORCHINDUCTOR_FX_GRAPH_CACHE"] = "1"
    os.environ["TORCHINDUCTOR_AUTOGRAD_CACHE"] = "1"
    os.environ["TRITON_CACHE_DIR"] = str(root / "triton")
    artifacts = root / CACHE_ARTIFACTS
    load = getattr(torch.compiler, "load_cache_artifacts", None)
    if artifacts.is_file() and load is not None:
        load(artifacts.read_bytes())


def save_compile_cache(directory: str) -> None:
    """Write this process's compiled artifacts (`torch.compiler.save_cache_artifacts`) into `directory`."""
    save = getattr(torch.compiler, "save_cache_artifacts", None)
    saved = save() if save is not None else None
    if saved is not None:
        target = Path(directory).resolve() / CACHE_ARTIFACTS
        tmp = target.with_suffix(".tmp")
        tmp.write_bytes(saved[0])
        tmp.replace(target)


def format_table(rows: list[TrainResult]) -> str:
    width = max([21, *(len(r.impl) + 1 for r in rows)])
    out = [
        f"{'impl':<{width}}{'config':<8}{'B':>4}{'T':>6}{'compile':>9}{'tok/s':>12}{'MFU':>8}{'step ms':>9}{'1st s':>7}"
    ]
    for r in rows:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        out.append(
            f"{r.impl:<{width}}{r.config:<8}{r.batch_size:>4}{r.seq_len:>6}{r.compile!s:>9}"
            f"{r.tokens_per_s:>12,.0f}{mfu:>8}{r.step_ms:>9.1f}{r.compile_s:>7.1f}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="minigpt-bench train", description=__doc__)
    p.add_argument("--configs", default=None, help="comma list (default: small,medium on CUDA, tiny on CPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--impls",
        default="e2e,minigpt,hf",
        help="e2e = minigpt-train with the real loader; minigpt / hf = model + optimizer on synthetic tokens",
    )
    p.add_argument("--no-compile", action="store_true", help="eager MiniGPT (the HF peer is always eager)")
    p.add_argument("--compile", action="store_true", help="compile MiniGPT on the CPU too (CUDA compiles by default)")
    p.add_argument(
        "--variants",
        default="base",
        help=f"comma list of MiniGPT levers to compare ({', '.join(VARIANTS)}; combine with +: fused-ce+bf16-params)",
    )
    p.add_argument(
        "--e2e-steps", type=int, default=None, help="steps of each end-to-end run (default 60 on CUDA, 12 on CPU)"
    )
    p.add_argument(
        "--compile-cache",
        default=None,
        metavar="DIR",
        help="keep compile caches in DIR: run twice for cold and warm first steps",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (torch.set_num_threads)")
    p.add_argument(
        "--nproc",
        default=None,
        help="comma list of process counts: the end-to-end run under torchrun (DDP) for each, e.g. 1,2",
    )
    p.add_argument("--json", default=None, help="write results here")
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        try:
            variant_settings(v)
        except ValueError as exc:
            p.error(str(exc))
    if args.threads is not None:
        if args.threads < 1:
            p.error("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    if args.compile_cache:
        use_compile_cache(args.compile_cache)
    dev = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    cuda = dev.type == "cuda"
    configs = (args.configs or ("small,medium" if cuda else "tiny")).split(",")
    B = args.batch_size or (32 if cuda else 2)
    T = args.seq_len or (1024 if cuda else 64)
    steps = args.steps or (20 if cuda else 3)
    e2e_steps = args.e2e_steps or (max(steps, 60) if cuda else max(steps, 12))
    rows: list[TrainResult] = []
    for name in configs:
        for impl in [i for i in args.impls.split(",") if i]:
            compile_it = impl != "hf" and (cuda or args.compile) and not args.no_compile
            for variant in variants if impl != "hf" else ["base"]:
                if impl == "e2e":
                    rows.append(
                        bench_e2e(
                            name, dev, batch_size=B, seq_len=T, steps=e2e_steps, compile=compile_it, variant=variant
                        )
                    )
                    continue
                rows.append(
                    bench_train(
                        impl,
                        name,
                        dev,
                        batch_size=B,
                        seq_len=T,
                        steps=steps,
                        warmup=args.warmup,
                        compile=compile_it,
                        variant=variant,
                    )
                )
    if args.compile_cache:
        save_compile_cache(args.compile_cache)
    for name in configs if args.nproc else ():
        for n in (int(x) for x in args.nproc.split(",")):
            compile_it = cuda and not args.no_compile
            rows.append(bench_e2e_torchrun(name, dev, n, batch_size=B, seq_len=T, steps=e2e_steps, compile=compile_it))
    mm = matmul_tflops(dev)
    info: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "compile_cache": args.compile_cache,
        "matmul_bf16_tflops": mm,
        "peak_bf16_tflops": device_peak_tflops(dev),
        "results": [asdict(r) for r in rows],
    }
    print(
        f"device: {info['device']}  torch {torch.__version__}  datasheet bf16 peak: {info['peak_bf16_tflops']} "
        f"TFLOP/s  measured 8192^3 bf16 matmul: {mm and round(mm)} TFLOP/s"
    )
    print(format_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""LoRA end to end: `minigpt-train --lora-rank` writes a PEFT adapter that HF PEFT loads on top of the exported
base with our logits and greedy tokens; PEFT's own adapters load into ours; `minigpt-export --merge-lora`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minigpt_core.checkpoint import load_checkpoint
from minigpt_core.lora import attach_adapters, merge_lora, read_adapter
from minigpt_core.model import MiniGPT
from training import cli, export

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # peft 0.21 reads transformers 5's deprecated `is_gradient_checkpointing`: their warning, not ours
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
]

PROMPT = torch.tensor([[1, 40, 41, 42, 7, 99, 13, 250, 2, 1, 60]])


@pytest.fixture(scope="module")
def lora_run(train_workdir: Path, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    argv = [
        *("--mode", "sft", "--init", str(tiny_checkpoint), "--data", str(train_workdir / "data"), "--out", str(out)),
        *("--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "q_proj,v_proj,down_proj"),
        *("--seq-len", "64", "--batch-size", "4", "--max-steps", "10", "--learning-rate", "1e-2", "--device", "cpu"),
        *("--eval-every", "5", "--save-every", "5", "--keep-last", "1", "--eval-batches", "2", "-q"),
    ]
    assert cli.main(argv) == 0
    return out


@pytest.fixture(scope="module")
def hf_base(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export") / "base-hf"
    assert export.main(["--model", str(tiny_checkpoint), "--format", "hf", "--out", str(out)]) == 0
    return out


def greedy(model: MiniGPT, ids: torch.Tensor, n: int) -> list[int]:
    out = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            out = torch.cat([out, model(out)[:, -1:].argmax(-1)], dim=1)
    return out[0, ids.shape[1] :].tolist()


def test_lora_run_trains_only_the_adapter(lora_run: Path) -> None:
    records = [json.loads(line) for line in (lora_run / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert records[0]["step"] == 0 and vals[-1] < vals[0] - 0.1, vals  # the adapter learned something
    assert sorted(p.name for p in (lora_run / "checkpoints").iterdir()) == ["step_0000010"]  # --keep-last 1
    config = json.loads((lora_run / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["target_modules"] == ["q_proj", "v_proj", "down_proj"]
    tensors = load_file(str(lora_run / "adapter_model.safetensors"))
    assert len(tensors) == 2 * 3 * 2  # A and B, 3 targets, 2 layers: no base weights
    assert tensors["base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"].abs().max() > 0
    assert not (lora_run / "model.safetensors").exists()


def test_peft_loads_our_adapter_with_our_logits_and_greedy_tokens(
    lora_run: Path, hf_base: Path, tiny_checkpoint: Path
) -> None:
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_base)).eval()
    with torch.no_grad():
        base_logits = hf(PROMPT).logits
    tuned = peft.PeftModel.from_pretrained(hf, str(lora_run)).eval()
    ours, _ = load_checkpoint(tiny_checkpoint)
    attach_adapters(ours, [("run", read_adapter(lora_run))], max_rows=1)
    ours.lora_index[:1] = 1
    with torch.no_grad():
        want = tuned(PROMPT).logits
        torch.testing.assert_close(ours(PROMPT), want, atol=1e-4, rtol=1e-4)
        assert (want - base_logits).abs().max() > 1e-2  # the adapter changes the output
        hf_tokens = tuned.generate(PROMPT, attention_mask=torch.ones_like(PROMPT), do_sample=False, max_new_tokens=12)
    assert hf_tokens[0, PROMPT.shape[1] :].tolist() == greedy(ours, PROMPT, 12)


def test_an_adapter_written_by_peft_loads_into_ours(hf_base: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(hf_base)).eval()
    config = peft.LoraConfig(
        r=2,
        lora_alpha=4,
        use_rslora=True,  # scaling alpha / sqrt(r)
        init_lora_weights=False,  # random B, so the adapter is not a no-op
        target_modules=["k_proj", "o_proj", "gate_proj", "up_proj"],
        task_type="CAUSAL_LM",
    )
    tuned = peft.get_peft_model(hf, config).eval()
    tuned.save_pretrained(str(tmp_path / "peft-adapter"))
    ours, _ = load_checkpoint(tiny_checkpoint)
    merge_lora(ours, read_adapter(tmp_path / "peft-adapter"))
    with torch.no_grad():
        torch.testing.assert_close(ours(PROMPT), tuned(PROMPT).logits, atol=1e-4, rtol=1e-4)


def test_export_merge_lora_writes_base_plus_adapter(lora_run: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    argv = ["--model", str(tiny_checkpoint), "--format", "hf", "--out", str(out), "--merge-lora", str(lora_run)]
    assert export.main(argv) == 0
    merged, _ = load_checkpoint(out)
    ours, _ = load_checkpoint(tiny_checkpoint)
    attach_adapters(ours, [("run", read_adapter(lora_run))], max_rows=1)
    ours.lora_index[:1] = 1
    with torch.no_grad():
        torch.testing.assert_close(merged(PROMPT), ours(PROMPT), atol=1e-5, rtol=1e-5)
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (tiny_checkpoint / name).read_bytes()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(PROMPT).logits, merged(PROMPT), atol=1e-4, rtol=1e-4)


def test_a_lora_run_resumes_exactly(train_workdir: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    argv = ["--mode", "sft", "--init", str(tiny_checkpoint), "--data", str(train_workdir / "data"), "--lora-rank", "4"]
    argv += ["--seq-len", "64", "--batch-size", "4", "--max-steps", "4", "--save-every", "2", "--eval-every", "2"]
    full, resumed = tmp_path / "a", tmp_path / "b"
    assert cli.main([*argv, "--log-every", "1", "--device", "cpu", "--out", str(full), "-q"]) == 0
    shutil.copytree(full, resumed, ignore=shutil.ignore_patterns("step_0000004"))  # as if stopped after step 2
    assert cli.main(["--resume", str(resumed / "checkpoints" / "step_0000002"), "-q"]) == 0
    runs = (full, resumed)
    a, b = (load_file(str(run / "checkpoints" / "step_0000004" / "adapter_model.safetensors")) for run in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rows = [[json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] for run in runs]
    losses = [[(r.get("loss"), r.get("val_loss")) for r in run_rows] for run_rows in rows]
    assert losses[1] == losses[0] and len(losses[0]) == 5  # step 0 (before training), then steps 1 to 4
    assert not (resumed / "model.safetensors").exists()  # still an adapter folder


@pytest.mark.parametrize(
    ("argv", "status", "needle"),
    [
        (["--mode", "sft", "--lora-rank", "4"], 2, "--lora-rank needs --init"),
        (["--resume", "{ckpt}", "--lora-rank", "4"], 2, "--lora-rank cannot be changed on --resume"),
        (["--mode", "pretrain", "--lora-rank", "4", "--init", "{ckpt}"], 1, "--mode sft only"),
        (["--mode", "sft", "--lora-rank", "4", "--init", "{ckpt}", "--lora-targets", "q_proj,lm_head"], 1, "lm_head"),
        (["--mode", "sft", "--lora-rank", "-1", "--init", "{ckpt}"], 1, "lora_rank must be"),
    ],
)
def test_bad_lora_flags_fail_with_one_line(
    argv: list[str], status: int, needle: str, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main([a.replace("{ckpt}", str(tiny_checkpoint)) for a in argv]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err


def test_export_refuses_a_bad_adapter(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "merged"
    argv = ["--model", str(tiny_checkpoint), "--format", "hf", "--out", str(out), "--merge-lora", str(tmp_path)]
    assert export.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapter_config.json: missing" in err[0], err
    assert not out.exists()

"""Throughput levers of issue 20 keep the numbers: the chunked linear + cross-entropy equals the full-logits loss
(values and gradients, ignore_index rows included), activation checkpointing equals the plain backward, a packed row
with document ids gives each document the logits it gets alone (and the SFT loader marks the documents), bf16
parameters with float32 master weights resume exactly, and the loss curve of a fixed-seed tiny run is unchanged by
--fused-ce and --activation-checkpointing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from minigpt_core.config import ModelConfig
from minigpt_core.model import MiniGPT, document_positions
from minigpt_core.tokenizer import Tokenizer
from tests.training.helpers import base_args
from training import cli
from training.fused_ce import linear_cross_entropy
from training.loader import IGNORE_INDEX, PackedLoader, load_datasets, resolve_data_files
from training.state import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = ModelConfig(vocab_size=97, n_layer=2, n_embd=32, n_head=4, n_kv_head=2, ffn_dim=64, max_seq_len=64)


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("chunk_rows", [1, 5, 10_000])
def test_chunked_linear_cross_entropy_equals_the_full_logits(chunk_rows: int) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11))
    targets[0, :4] = IGNORE_INDEX  # an SFT prompt: no loss there
    targets[2, -1] = IGNORE_INDEX
    full = F.cross_entropy(
        F.linear(hidden, weight).float().view(-1, 50), targets.view(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    grads = torch.autograd.grad(full * 0.37, (hidden, weight))
    chunked = linear_cross_entropy(hidden, weight, targets, ignore_index=IGNORE_INDEX, chunk_rows=chunk_rows)
    chunked_grads = torch.autograd.grad(chunked * 0.37, (hidden, weight))
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=1e-5)
    for got, want in zip(chunked_grads, grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert float(grads[0][0, :4].abs().sum()) == 0.0  # ignored rows get no gradient, on both paths
    assert float(chunked_grads[0][0, :4].abs().sum()) == 0.0


def test_the_compiled_chunk_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 12, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    targets = torch.randint(0, 40, (2, 12))
    targets[1, :5] = IGNORE_INDEX
    eager = linear_cross_entropy(hidden, weight, targets, chunk_rows=8)
    compiled = linear_cross_entropy(hidden, weight, targets, chunk_rows=8, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-5)
    for got, want in zip(
        torch.autograd.grad(compiled, (hidden, weight)), torch.autograd.grad(eager, (hidden, weight)), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_chunked_loss_under_bf16_autocast_matches_the_autocast_path() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(4, 9, 32, requires_grad=True)
    weight = torch.randn(64, 32, requires_grad=True)
    targets = torch.randint(0, 64, (4, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight).float()
        chunked = linear_cross_entropy(hidden, weight, targets, chunk_rows=7)
    full = F.cross_entropy(logits.view(-1, 64), targets.view(-1), reduction="sum")
    torch.testing.assert_close(chunked, full, rtol=1e-3, atol=1e-2)
    g_full = torch.autograd.grad(full, weight)[0]
    g_chunked = torch.autograd.grad(chunked, weight)[0]
    torch.testing.assert_close(g_chunked, g_full, rtol=2e-2, atol=2e-2)


def test_activation_checkpointing_gives_the_same_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = MiniGPT(CFG)
    x = torch.randint(0, CFG.vocab_size, (2, 20))

    def loss_and_grads() -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[:, :-1]).view(-1, CFG.vocab_size), x[:, 1:].reshape(-1))
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain, plain_grads = loss_and_grads()
    model.activation_checkpointing = True
    ckpt, ckpt_grads = loss_and_grads()
    assert torch.equal(ckpt, plain)
    assert len(ckpt_grads) == len(plain_grads) == len(list(model.parameters()))
    for a, b in zip(ckpt_grads, plain_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_a_packed_row_with_document_ids_gives_each_document_its_own_logits() -> None:
    torch.manual_seed(0)
    model = MiniGPT(CFG).eval()
    docs = [torch.randint(0, CFG.vocab_size, (n,)) for n in (9, 6, 12)]
    row = torch.cat(docs)[None]  # (1, 27): three documents in one packed row
    doc_ids = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])[None]
    assert document_positions(doc_ids).tolist() == [[*range(9), *range(6), *range(12)]]
    with torch.no_grad():
        masked = model(row, doc_ids=doc_ids)[0]
        plain = model(row)[0]
        alone = [model(d[None])[0] for d in docs]
    start = 0
    for d, want in zip(docs, alone, strict=True):
        torch.testing.assert_close(masked[start : start + len(d)], want, rtol=1e-5, atol=1e-5)
        start += len(d)
    # Without the ids the later documents see the earlier ones (what packed SFT rows did before issue 20).
    assert not torch.allclose(plain[9:15], alone[1], atol=1e-3)


def test_the_sft_loader_numbers_the_conversations_of_a_row(train_workdir: Path, tiny_tokenizer: Tokenizer) -> None:
    train, _ = load_datasets(resolve_data_files(train_workdir / "data", "sft"), "sft", tiny_tokenizer)
    loader = PackedLoader(train, 160, 2, pack="docs", shuffle=False, repeat=False)
    x, y, doc_ids = loader.next_batch_docs()  # type: ignore[misc]
    lengths = [train.length(i) for i in range(8)]
    start = 0
    for piece, length in enumerate(lengths):  # rows of 161 tokens hold whole conversations, in order
        if start + length > 161:
            break
        assert (doc_ids[0, start : min(start + length, 160)] == piece).all()
        start += length
    assert piece >= 2 and (doc_ids[0, start:] == piece).all()  # the padding is one more document
    assert doc_ids.shape == x.shape == y.shape


def test_fused_ce_and_activation_checkpointing_keep_the_loss_curve(train_workdir: Path, tmp_path: Path) -> None:
    """A fixed-seed tiny run: 6 steps of pretrain and of SFT; the curves agree to float32 summation noise."""
    for mode in ("pretrain", "sft"):
        curves = {}
        for name, flags in {"base": [], "fused": ["--fused-ce"], "ckpt": ["--activation-checkpointing"]}.items():
            out = tmp_path / f"{mode}-{name}"
            argv = [*base_args(train_workdir, train_workdir / "data", out, mode=mode), "--max-steps", "6"]
            argv += ["--log-every", "1", "--eval-every", "100", "--seed", "0", "--learning-rate", "3e-3", *flags]
            assert cli.main(argv) == 0
            curves[name] = _losses(out)
        assert len(curves["base"]) == 6 and curves["base"][-1] < curves["base"][0]
        for name in ("fused", "ckpt"):
            assert curves[name] == pytest.approx(curves["base"], rel=1e-5), (mode, name)


def test_bf16_parameters_keep_float32_master_weights_and_resume_exactly(train_workdir: Path, tmp_path: Path) -> None:
    common = [*base_args(train_workdir, train_workdir / "data", tmp_path / "a"), "--eval-every", "3", "--seed", "0"]
    common += ["--log-every", "1", "--learning-rate", "3e-3"]
    assert cli.main([*common, "--max-steps", "6", "--save-every", "3", "--param-dtype", "bfloat16"]) == 0
    full = dict(list_checkpoints(tmp_path / "a"))
    assert cli.main(["--resume", str(full[3]), "--out", str(tmp_path / "b"), "-q"]) == 0
    resumed = dict(list_checkpoints(tmp_path / "b"))[6]
    a, b = load_file(str(full[6] / "model.safetensors")), load_file(str(resumed / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == torch.float32, name  # the checkpoint holds the master weights
        assert torch.equal(a[name], b[name]), name
    assert json.loads((resumed.parent.parent / "run_config.json").read_text())["runtime"]["param_dtype"] == "bfloat16"
    fp32 = [a.replace(str(tmp_path / "a"), str(tmp_path / "c")) for a in common]
    assert cli.main([*fp32, "--max-steps", "6", "--save-every", "3"]) == 0
    bf16_curve, fp32_curve = _losses(tmp_path / "a"), _losses(tmp_path / "c")
    # bf16 rounding of the weights and the residual stream: close to the float32 curve, not equal to it
    assert bf16_curve != fp32_curve
    assert bf16_curve == pytest.approx(fp32_curve, abs=0.05)


@pytest.mark.parametrize(
    "flag", [["--fused-ce"], ["--param-dtype", "bfloat16"], ["--activation-checkpointing"], ["--doc-mask", "on"]]
)
def test_levers_are_refused_for_the_preference_stages(
    flag: list[str], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--mode", "dpo", "--init", str(tiny_checkpoint), "--out", str(tmp_path / "x"), "--device", "cpu", *flag]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and flag[0] in err and "not dpo" in err

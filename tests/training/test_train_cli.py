"""`minigpt-train` / `minigpt-eval` end to end, in process, on tiny fixture files: loss falls, SFT from --init,
the output folder loads (ours and transformers), exact resume, the NaN guard, flags and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from minigpt_core.checkpoint import load_checkpoint
from tests.training.helpers import base_args, pretrain_lines
from training import cli, eval_cli
from training.state import list_checkpoints


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def pretrained(train_workdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "pre"
    args = base_args(train_workdir, train_workdir / "data", out)
    argv = [*args, "--max-steps", "40", "--eval-every", "20", "--save-every", "20", "--learning-rate", "3e-3"]
    assert cli.main(argv) == 0
    return out


def test_pretrain_loss_falls_and_run_folder_is_complete(pretrained: Path) -> None:
    records = _metrics(pretrained)
    losses = [r["loss"] for r in records]
    assert losses[-1] < losses[0] - 1.0, losses
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 2 and vals[-1] < vals[0]
    assert all(0 < r["val_bpb"] < 10 for r in records if "val_bpb" in r)
    assert [s for s, _ in list_checkpoints(pretrained)] == [20, 40]
    cfg = json.loads((pretrained / "run_config.json").read_text())
    assert cfg["schedule"]["max_steps"] == 40 and cfg["model"]["n_layer"] == 2 and cfg["mode"] == "pretrain"
    assert (pretrained / "loss.png").stat().st_size > 1000
    model, tok = load_checkpoint(pretrained)
    assert model.config.vocab_size == tok.vocab_size


def test_output_loads_in_transformers_with_the_same_logits(pretrained: Path) -> None:
    transformers = pytest.importorskip("transformers")
    ours, _ = load_checkpoint(pretrained)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(pretrained)).eval()
    ids = torch.tensor([[5 + i % 50 for i in range(20)]])
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids), atol=1e-4, rtol=1e-4)


def test_sft_from_init_learns_the_answers(
    pretrained: Path, train_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sft"
    args = base_args(train_workdir, train_workdir / "data", out, mode="sft")
    args = [a for a in args if a not in ("--tokenizer", str(train_workdir / "tok"))]  # the tokenizer comes from --init
    assert (
        cli.main(
            [*args, "--init", str(pretrained), "--max-steps", "60", "--eval-every", "30", "--learning-rate", "5e-3"]
        )
        == 0
    )
    records = _metrics(out)
    assert records[-1]["loss"] < records[0]["loss"]
    assert [r["val_loss"] for r in records if "val_loss" in r][-1] < 1.5, records[-1]
    assert load_checkpoint(out)[0].config == load_checkpoint(pretrained)[0].config
    capsys.readouterr()
    rc = eval_cli.main(["--model", str(out), "--data", str(train_workdir / "data" / "sft_val.jsonl"), "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["mode"] == "sft" and report["tokens"] > 0 and 0 < report["loss"] < 1.5 and report["bits_per_byte"] > 0


def test_resume_is_exact(train_workdir: Path, tmp_path: Path) -> None:
    common = [*base_args(train_workdir, train_workdir / "data", tmp_path / "a"), "--eval-every", "3"]
    assert cli.main([*common, "--max-steps", "6", "--save-every", "3", "--grad-accum", "2"]) == 0
    full = dict(list_checkpoints(tmp_path / "a"))
    resumed_out = tmp_path / "b"
    assert cli.main(["--resume", str(full[3]), "--out", str(resumed_out), "-q"]) == 0
    final = dict(list_checkpoints(resumed_out))[6]
    a, b = load_file(str(full[6] / "model.safetensors")), load_file(str(final / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert (
        json.loads((final / "trainer_state" / "state.json").read_text())["loader"]
        == json.loads((full[6] / "trainer_state" / "state.json").read_text())["loader"]
    )


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(
    train_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nan"
    args = [*base_args(train_workdir, train_workdir / "data", out), "--save-every", "1", "--eval-every", "50"]
    assert cli.main([*args, "--max-steps", "8", "--learning-rate", "1e30", "--warmup-steps", "0"]) == 3
    err = capsys.readouterr().err
    assert "diverged" in err and "last good checkpoint" in err
    saved = list_checkpoints(out)
    assert saved and all(torch.isfinite(t).all() for t in load_file(str(saved[-1][1] / "model.safetensors")).values())


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--mode", "dpo"], "needs --init"),
        (["--mode", "rlhf"], "needs --init"),
        (["--no-such-flag"], "unrecognized arguments"),
        (["--data", "/does/not/exist.jsonl"], "no such file"),
        (["--init", "/does/not/exist"], "not a checkpoint folder"),
        (["--config", "huge"], "unknown config preset"),
        (["--resume", "/does/not/exist"], "no such folder"),
    ],
)
def test_bad_invocations_fail_with_one_line(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert rc in (1, 2) and needle in err
    assert len(err.splitlines()) == 1, err


def test_plot_subcommand_and_eval_usage(pretrained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plot", str(pretrained), "--out", str(tmp_path / "curve.png")]) == 0
    assert (tmp_path / "curve.png").stat().st_size > 1000
    assert eval_cli.main(["--model", str(pretrained)]) == 2
    assert "required" in capsys.readouterr().err


def test_threads_flag_reaches_torch_and_zero_is_a_usage_error(
    pretrained: Path, train_workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = tmp_path / "t"
        args = [*base_args(train_workdir, train_workdir / "data", out), "--max-steps", "1", "--eval-every", "5"]
        capsys.readouterr()
        assert cli.main([*args, "--threads", "1"]) == 0
        assert capsys.readouterr().out == ""  # -q: not even the validation line of the last step
        assert torch.get_num_threads() == 1
        assert json.loads((out / "run_config.json").read_text())["runtime"]["threads"] == 1  # recorded with the run
        torch.set_num_threads(2)
        data = str(train_workdir / "data" / "pretrain_val.jsonl")
        assert eval_cli.main(["--model", str(pretrained), "--data", data, "--max-batches", "1", "-t", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()
    for main, argv in [
        (cli.main, ["--threads", "0"]),
        (eval_cli.main, ["--model", str(pretrained), "--data", "x", "--threads", "0"]),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--threads must be at least 1, got 0" in err and err.count("\n") == 1, err


def test_eval_loss_uses_the_trained_row_length(
    pretrained: Path, train_workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(train_workdir / "data" / "pretrain_val.jsonl")
    reports = {}
    for name, model in [("run", pretrained), ("step", list_checkpoints(pretrained)[-1][1])]:
        capsys.readouterr()
        assert eval_cli.main(["--model", str(model), "--data", data, "--json"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    assert reports["run"]["seq_len"] == reports["step"]["seq_len"] == 64  # base_args trains with --seq-len 64
    assert eval_cli.main(["--model", str(pretrained), "--data", data, "--json", "--seq-len", "64"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == reports["run"]["loss"]


def test_pretrain_on_plain_text_with_val_data(train_workdir: Path, tmp_path: Path) -> None:
    book = "\n".join(r["text"] + "." for r in pretrain_lines(300, seed=1))
    (tmp_path / "input.txt").write_text(book.replace(". ", ".\n\n", 40))
    (tmp_path / "held.txt").write_text("\n".join(r["text"] for r in pretrain_lines(30, seed=2)))
    out = tmp_path / "run"
    args = base_args(train_workdir, tmp_path / "input.txt", out)
    assert cli.main([*args, "--val-data", str(tmp_path / "held.txt"), "--max-steps", "6", "--eval-every", "3"]) == 0
    records = _metrics(out)
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
    assert json.loads((out / "run_config.json").read_text())["data"]["val_data"] == str(tmp_path / "held.txt")

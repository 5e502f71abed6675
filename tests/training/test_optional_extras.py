"""The optional extras (issue 19 item 7): matplotlib (`plot`) and gguf (`gguf`) are not core dependencies. Without
them the feature stops with one line that names the extra to install; `.[dev]` pulls both so every test runs."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from pathlib import Path

import pytest

from training.export import ExportError, export_gguf, main
from training.plot import PlotUnavailable, plot_after_run, plot_run

ROOT = Path(__file__).resolve().parents[2]


def test_loss_plot_and_the_plot_extra_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": step, "loss": 3.0 - step / 10}) for step in range(5)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = plot_run(run)
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import matplotlib` meets when it is not installed
    with pytest.raises(PlotUnavailable, match=re.escape("pip install 'minigpt[plot]'")):
        plot_run(run)
    plot_after_run(run)  # the end of a training run: a warning, not a failure
    assert "no loss plot" in caplog.text and "minigpt[plot]" in caplog.text


def test_gguf_export_names_the_gguf_extra_when_gguf_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(ExportError, match=re.escape("pip install 'minigpt[gguf]'")):
        export_gguf(tmp_path / "model", tmp_path / "m.gguf")
    assert main(["--model", str(tmp_path / "model"), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith("pip install 'minigpt[gguf]'")


def test_core_dependencies_leave_the_extras_out_and_dev_pulls_them() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[<>=;\[ ]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert not names & {"matplotlib", "gguf", "sse-starlette"}
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["plot"]] == ["matplotlib"]
    assert [d.split(">")[0] for d in extras["gguf"]] == ["gguf"]
    assert "minigpt[plot,gguf]" in extras["dev"]

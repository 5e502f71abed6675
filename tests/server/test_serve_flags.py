"""minigpt-serve's flags come from `Settings` (issue 19): one flag per field, typed, described, env vars still read."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from server.__main__ import build_parser, settings_from_args
from server.settings import Settings

# every flag minigpt-serve had before the flags were derived from Settings: each keeps its name
FLAGS_BEFORE = (
    "--model --host --port --api-key --served-model-name --device --dtype --compile-decode --max-num-seqs "
    "--decode-steps --max-prefill-tokens --max-model-len --max-queued --max-body-bytes --default-max-tokens "
    "--log-level -t --threads --allowed-origins --max-connections --body-timeout --lora-modules --chat-template "
    "--drain-timeout"
).split()


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in build_parser()._actions if a.option_strings and a.dest != "help"}


def test_every_setting_is_a_flag_described_by_its_field() -> None:
    actions = _actions()
    assert set(actions) == set(Settings.model_fields)
    for name, info in Settings.model_fields.items():
        assert info.description, f"Settings.{name} has no description (its --help text)"
        assert actions[name].help is not None and actions[name].help.startswith(info.description)
    names = {s for a in actions.values() for s in a.option_strings}
    assert set(FLAGS_BEFORE) <= names
    assert {"--retry-after-s", "--keep-alive-timeout-s"} <= names  # settings that had only a MINIGPT_* variable


def test_flags_parse_as_the_fields_types(tmp_path: Path) -> None:
    s = settings_from_args(["--compile-decode", "false", "--retry-after-s", "3", "--keep-alive-timeout-s", "7"])
    assert (s.compile_decode, s.retry_after_s, s.keep_alive_timeout_s) == (False, 3, 7)
    assert settings_from_args(["--compile-decode"]).compile_decode is True
    assert settings_from_args(["--compile-decode", "TRUE"]).compile_decode is True
    s = settings_from_args(["--body-timeout", "2.5", "--drain-timeout", "0", "-t", "2", "--decode-steps", "4"])
    assert (s.body_timeout_s, s.drain_timeout_s, s.threads, s.decode_steps) == (2.5, 0.0, 2, 4)
    a, b = tmp_path / "a", tmp_path / "b"
    assert settings_from_args(["--lora-modules", f"x={a}", f"y={b}"]).lora_modules == (("x", a), ("y", b))
    assert build_parser().parse_args(["--port", "9"]).port == 9  # an int before pydantic sees it


@pytest.mark.parametrize(
    ("args", "last_line"),
    [
        (["--compile-decode", "maybe"], "minigpt-serve: error: argument --compile-decode: 'maybe' is not a boolean"),
        (
            ["--retry-after-s", "-1"],
            "minigpt-serve: error: --retry-after-s: Input should be greater than or equal",
        ),
        (["--body-timeout", "0"], "minigpt-serve: error: --body-timeout: Input should be greater than 0"),
        (["--device", "tpu"], "minigpt-serve: error: --device: Input should be 'auto', 'cpu', 'cuda' or 'mps'"),
    ],
)
def test_bad_values_are_one_line_usage_errors(
    args: list[str], last_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        settings_from_args(args)
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(last_line)


def test_environment_variables_still_set_what_no_flag_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINIGPT_COMPILE_DECODE", "false")
    monkeypatch.setenv("MINIGPT_RETRY_AFTER_S", "5")
    monkeypatch.setenv("MINIGPT_ALLOWED_ORIGINS", "http://a.example,http://b.example")
    s = settings_from_args([])
    assert (s.compile_decode, s.retry_after_s) == (False, 5)
    assert s.allowed_origins == ("http://a.example", "http://b.example")
    assert settings_from_args(["--compile-decode", "true", "--retry-after-s", "2"]).retry_after_s == 2


def test_settings_and_the_cli_parser_do_not_import_torch() -> None:
    code = (
        "import sys; import server.settings, server.__main__, minigpt_core.resources; "
        "server.settings.Settings().resolved_model_dir(); "
        "sys.exit('torch' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0

"""TrainConfig in sections: configs written by older versions (flat: fixtures/run_config_v1.json was written before
the sections existed) load with every value (test_resume.py resumes such a checkpoint), and every setting with a
flag reaches `minigpt-train`'s parser from its dataclass field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from training import cli
from training.config import SECTIONS, TrainConfig, to_flat

OLD_CONFIG = Path(__file__).parent / "fixtures" / "run_config_v1.json"


def test_a_flat_config_of_an_older_version_loads_with_every_value() -> None:
    cfg = TrainConfig.load(OLD_CONFIG)
    assert (cfg.mode, cfg.init, cfg.dpo.beta, cfg.dpo.loss) == ("dpo", "runs/sft", 0.2, "ipo")
    assert (cfg.optim.learning_rate, cfg.schedule.max_steps, cfg.runtime.threads) == (1e-4, 7, 2)
    assert (cfg.data.seq_len, cfg.lora.targets, cfg.model.n_layer) == (768, "q_proj", 8)
    old = json.loads(OLD_CONFIG.read_text())
    flat = to_flat(cfg)
    newer = {"doc_mask", "compile_mode", "param_dtype", "fused_ce", "activation_checkpointing"}  # issue 20
    assert set(flat) - set(old) == newer
    defaults = {"doc_mask": "auto", "compile_mode": "default", "param_dtype": "float32", "fused_ce": False}
    assert {k: flat[k] for k in newer} == {**defaults, "activation_checkpointing": False}
    flat = {k: v for k, v in flat.items() if k not in newer}
    assert {**flat, "model": dataclasses.asdict(flat["model"])} == old  # the same settings, key for key
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # and the nested form round-trips
    assert set(cfg.to_dict()) == {"mode", "config_name", "model", "out_dir", "init", *SECTIONS}


@pytest.mark.parametrize("section", ["", *SECTIONS])
def test_every_setting_with_a_flag_reaches_the_parser(section: str) -> None:
    dests = {a.dest for a in cli.build_parser()._actions}
    owner = TrainConfig if not section else SECTIONS[section][0]
    for f in dataclasses.fields(owner):
        if f.metadata.get("cli"):
            assert (f.metadata["flat"] or f.name) in dests, f.name

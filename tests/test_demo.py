"""`mllm demo --quick`: the whole pipeline runs end to end and leaves every artefact in one directory."""
from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end(tmp_path, capsys):
    from mllm.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    for d in ("data", "encoder", "align", "multitask", "instruct", "eval_mmbench"):
        assert (out / d).is_dir(), d
    for stage in ("align", "multitask", "instruct"):
        assert (out / stage / "model.safetensors").exists()
        assert json.loads((out / stage / "train_config.json").read_text())["init_from"].endswith(
            {"align": "encoder", "multitask": "align", "instruct": "multitask"}[stage])
    scores = json.loads((out / "eval_mmbench" / "scores.json").read_text())
    assert set(scores) == {"circular", "vanilla"} and 0.0 <= scores["circular"]["Overall"] <= 1.0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["circular_accuracy"] == scores["circular"]["Overall"]
    assert [s["step"] for s in summary["steps"]][:2] == ["make Shapes world", "encoder pretraining"]
    printed = capsys.readouterr().out
    assert "circular accuracy" in printed and "train: instruct" in printed

"""`mllm demo --quick`: the whole pipeline runs end to end and leaves every artefact in one directory."""
from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end(tmp_path, capsys):
    from mllm.app.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quick"]) == 0
    for d in ("data", "encoder", "text", "align", "multitask", "instruct", "eval_mmbench", "eval_mmbench_blank"):
        assert (out / d).is_dir(), d
    # the text-pretrained LLM is what stage 1 aligns to
    assert (out / "text" / "model.safetensors").exists() and (out / "text" / "text_pretrain.json").exists()
    for stage in ("align", "multitask", "instruct"):
        assert (out / stage / "model.safetensors").exists()
        assert json.loads((out / stage / "train_config.json").read_text())["init_from"].endswith(
            {"align": "text", "multitask": "align", "instruct": "multitask"}[stage])
    scores = json.loads((out / "eval_mmbench" / "scores.json").read_text())
    assert set(scores) == {"circular", "vanilla"} and 0.0 <= scores["circular"]["Overall"] <= 1.0
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["circular_accuracy"] == scores["circular"]["Overall"]
    assert [s["step"] for s in summary["steps"]][:3] == ["make Shapes world", "tower pretraining",
                                                         "LLM text pretraining"]
    # the blank-image baseline (same model, background-only images) and the figures
    blank = json.loads((out / "eval_mmbench_blank" / "scores.json").read_text())
    assert summary["blank_circular_accuracy"] == blank["circular"]["Overall"]
    assert summary["categories"]["Overall"]["blank_circular"] == blank["circular"]["Overall"]
    for fig in ("learning_curves.png", os.path.join("eval_mmbench", "categories.png")):
        assert (out / fig).stat().st_size > 1000, fig
    # the generation step: a gen-stage checkpoint, the metrics file with the keys, the sample grid
    assert (out / "gen" / "model.safetensors").exists()
    gen = json.loads((out / "generation_metrics.json").read_text())
    for key in ("colour_shape_accuracy", "colour_accuracy", "shape_accuracy", "position_accuracy", "fd",
                "fd_real_vs_real"):
        assert isinstance(gen[key], float), key
    assert summary["generation"]["colour_shape_accuracy"] == gen["colour_shape_accuracy"]
    assert (out / "generation_samples.png").exists()
    printed = capsys.readouterr().out
    assert "circular accuracy" in printed and "train: instruct" in printed and "generation" in printed
    assert "blank images" in printed

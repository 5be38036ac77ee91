"""The stage runner's packing path (per-sample attention, loss equal to padding) and ``torch_compile``."""
from __future__ import annotations

import os

import pytest

import mllm.attention as attention
from mllm.compiling import block_class_names, compile_blocks
from train_stages.hf_args import compile_options, training_arguments
from train_stages.runner import run_stage
from train_stages.specs import TrainConfig

from ._tiny import tiny_config
from ._train_fixtures import make_start, make_world, stage_dict


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("train"))
    return {"data": make_world(root, n_train=8, n_test=2), "start": make_start(root)}


def _cfg(world, out, **extra) -> TrainConfig:
    return TrainConfig.from_dict(stage_dict("multitask", str(out), world["start"],
                                            os.path.join(world["data"], "vqa_train.json"), **extra))


def test_packed_stage_attends_per_sample_and_matches_padding(world, tmp_path, monkeypatch):
    rows = []
    real = attention.segments

    def spy(position_ids):
        out = real(position_ids)
        rows.append(out)
        return out

    monkeypatch.setattr(attention, "segments", spy)
    padded = run_stage(_cfg(world, tmp_path / "padded", max_steps=1, learning_rate=1e-3))
    assert not rows  # padded batches carry an attention mask: transformers' own sdpa path
    packed = run_stage(_cfg(world, tmp_path / "packed", max_steps=1, learning_rate=1e-3, packing=True))
    # the runner switched sdpa -> sdpa_packed, and the packed rows held several samples each
    assert rows and max(len(spans) for r in rows for spans in r) >= 2
    # the same 4 samples in the first batch, padded or packed: the same mean token loss
    assert packed["first_loss"] == pytest.approx(padded["first_loss"], rel=1e-4)


def test_torch_compile_option_compiles_the_blocks_not_the_trainer(world, tmp_path):
    cfg = _cfg(world, tmp_path / "c", torch_compile=True, torch_compile_backend="eager")
    assert compile_options(cfg) == {"backend": "eager", "mode": None}
    assert compile_options(_cfg(world, tmp_path / "n")) is None
    args = training_arguments(cfg, None)
    assert not args.torch_compile  # the Trainer would compile the whole model (graph breaks, recompiles)
    # a short run with dynamo tracing every block (the "eager" backend: the wiring, without inductor's
    # minutes of C++ code generation on this CPU); packed, so sdpa_packed runs outside the graphs
    summary = run_stage(_cfg(world, tmp_path / "run", max_steps=2, packing=True, torch_compile=True,
                             torch_compile_backend="eager"))
    assert summary["steps"] == 2 and summary["last_loss"] > 0


def test_compile_blocks_finds_the_llm_and_tower_layers():
    from mllm.model import MultimodalLM

    model = MultimodalLM.build(tiny_config())
    assert {"LlamaDecoderLayer", "CLIPEncoderLayer"} <= block_class_names(model)
    layers = [m for m in model.modules() if type(m).__name__ in ("LlamaDecoderLayer", "CLIPEncoderLayer")]
    assert len(layers) == 2 + 1  # 2 LLM layers; the tower keeps 1 of 2 (features from layer -2)
    assert compile_blocks(model, backend="eager") == len(layers)
    assert all(m._compiled_call_impl is not None for m in layers)
    state = model.state_dict()
    assert not any("_orig_mod" in k for k in state)  # in place: checkpoints keep their names

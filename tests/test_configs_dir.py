"""configs/: every example parses; the real presets' configs name a preset whose architecture builds (on the
meta device, no download) and chain their stages; the tiny ones run a few steps on a generated world."""
from __future__ import annotations

import glob
import os

import pytest
import torch
import yaml

from mllm.presets import get_preset, offline
from train_stages.runner import resolve_deepspeed
from train_stages.specs import TrainConfig

from ._train_fixtures import make_start, make_world, weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
STAGE_FILES = sorted(p for p in glob.glob(os.path.join(CONFIGS, "*", "*.yaml")) if not p.endswith("_mixture.yaml"))
REAL = ("llava-1.5-7b", "llava-next-7b", "siglip-qwen2.5-7b", "blip2-opt-2.7b")


def _load(path):
    if yaml.safe_load(open(path)).get("stage") == "encoder":
        return None
    return TrainConfig.load(path)


def test_every_preset_has_a_config_per_stage():
    for preset in REAL + ("tiny",):
        names = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, preset, "*.yaml"))}
        stages = {yaml.safe_load(open(os.path.join(CONFIGS, preset, n))).get("stage") for n in names}
        assert {"align", "multitask", "instruct"} <= stages, (preset, stages)
    qwen = {os.path.basename(p) for p in glob.glob(os.path.join(CONFIGS, "siglip-qwen2.5-7b", "*.yaml"))}
    assert {"instruct_lora.yaml", "instruct_qlora.yaml"} <= qwen


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: os.path.relpath(p, CONFIGS))
def test_config_parses_and_is_consistent(path):
    cfg = _load(path)
    if cfg is None:  # the tiny encoder pretraining: its own typed config
        from mllm import typed
        from train_stages.encoder_pretrain import EncoderPretrainConfig

        data = {k: v for k, v in yaml.safe_load(open(path)).items() if k != "stage"}
        enc = typed.from_dict(EncoderPretrainConfig, data, where=path)
        assert enc.learning_rate == 6e-3 and isinstance(enc.learning_rate, float)
        return
    resolve_deepspeed(cfg.resolved_zero())
    assert cfg.data or cfg.mixture
    if cfg.mixture:
        from train_stages.data import stage_mixture

        assert stage_mixture(cfg).sources
    preset = os.path.basename(os.path.dirname(path))
    if cfg.model is not None:
        assert cfg.model == preset and cfg.stage == "align"
    else:  # init_from names another stage's output_dir of the same preset, never a guess
        files = [p for p in glob.glob(os.path.join(CONFIGS, preset, "*.yaml")) if not p.endswith("_mixture.yaml")]
        outs = {c.output_dir for c in map(_load, files) if c is not None}
        assert cfg.init_from in outs | {f"runs/{preset}/encoder"}, cfg.init_from
    assert isinstance(cfg.resolved_lr(), float)
    if preset in REAL:
        # as LLaVA runs them on 8 GPUs: global batch 256 for stage 1, 128 afterwards
        global_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * 8
        assert global_batch == (256 if cfg.stage == "align" else 128), (path, global_batch)
        assert cfg.bf16 and cfg.training_args.get("tf32") is True


@pytest.mark.parametrize("preset", REAL)
def test_real_preset_architecture_builds_on_meta(preset):
    from mllm.llm import hf_config_from_dict
    from mllm.vision import build_vision_tower
    from transformers import AutoModelForCausalLM

    cfg = offline(get_preset(preset))
    with torch.device("meta"):
        tower = build_vision_tower(cfg.vision)
        llm = AutoModelForCausalLM.from_config(hf_config_from_dict(cfg.llm.config),
                                               attn_implementation=cfg.llm.attn_implementation)
    n_llm = sum(p.numel() for p in llm.parameters())
    assert n_llm > 2e9 and next(llm.parameters()).is_meta
    assert sum(p.numel() for p in tower.parameters()) > 2e8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cfgs"))
    return {"data": make_world(root, n_train=16, n_test=4), "start": make_start(root)}


def test_tiny_configs_run_a_few_steps(world, tmp_path):
    from train_stages.runner import run_stage

    prev = world["start"]
    for name in ("align", "multitask", "instruct", "instruct_lora"):
        path = os.path.join(CONFIGS, "tiny", f"{name}.yaml")
        src = yaml.safe_load(open(path))
        data = [{**d, "path": d["path"].replace("data/shapes", world["data"])} for d in src["data"]]
        init = world["start"] if name == "align" else prev
        cfg = TrainConfig.load(path, [f"data={data}", f"init_from={init}", f"output_dir={tmp_path / name}",
                                      "max_steps=2", "per_device_train_batch_size=4", "logging_steps=1"])
        summary = run_stage(cfg)
        assert summary["steps"] == 2 and summary["first_loss"] > 0
        assert weights(cfg.output_dir).keys() == weights(world["start"]).keys()
        if name != "instruct_lora":
            prev = cfg.output_dir

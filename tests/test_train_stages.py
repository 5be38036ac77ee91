"""Stage runner, single process: freeze policies change exactly the intended parameters, LoRA, QLoRA,
per-module learning rates, atomic checkpoints and resume, config errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mllm.model import MultimodalLM
from train_stages.freeze import apply_policy, per_module_param_groups
from train_stages.runner import run_stage
from train_stages.specs import TrainConfig
from train_stages.trainer import COMPLETE_MARKER, latest_checkpoint

from ._train_fixtures import changed_prefixes, make_start, make_world, stage_dict, weights


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("train"))
    return {"data": make_world(root), "start": make_start(root), "root": root}


def _run(world, tmp_path, stage, data_file, **extra):
    cfg = TrainConfig.from_dict(stage_dict(stage, str(tmp_path / stage), world["start"],
                                           os.path.join(world["data"], data_file), **extra))
    summary = run_stage(cfg)
    return cfg, summary


def test_align_trains_only_the_connector(world, tmp_path):
    cfg, summary = _run(world, tmp_path, "align", "captions_train.json")
    ch = changed_prefixes(weights(world["start"]), weights(cfg.output_dir))
    assert ch == {"vision_tower": False, "connector": True, "llm": False, "image_newline": True}
    assert summary["steps"] == 2 and summary["first_loss"] > 0
    for f in ("train_config.json", "mllm_config.json", "metrics.jsonl", "summary.json", "tokenizer.json"):
        assert os.path.exists(os.path.join(cfg.output_dir, f)), f
    logged = [json.loads(line) for line in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
    assert any("loss" in r for r in logged)
    MultimodalLM.from_pretrained(cfg.output_dir)  # the next stage's init_from loads strictly


def test_multitask_trains_connector_and_llm_and_optionally_the_tower(world, tmp_path):
    cfg, _ = _run(world, tmp_path, "multitask", "vqa_train.json")
    ch = changed_prefixes(weights(world["start"]), weights(cfg.output_dir))
    assert ch == {"vision_tower": False, "connector": True, "llm": True, "image_newline": True}
    cfg2, _ = _run(world, tmp_path / "v", "multitask", "vqa_train.json",
                   modules={"vision": {"mode": "full", "lr": 1e-3}})
    ch2 = changed_prefixes(weights(world["start"]), weights(cfg2.output_dir))
    assert all(ch2.values())


def test_per_module_learning_rates(world):
    cfg = TrainConfig.from_dict(stage_dict("multitask", "/tmp/unused", world["start"], "x.json",
                                           modules={"vision": {"mode": "full", "lr": 2e-6}}, learning_rate=1e-4))
    model = MultimodalLM.from_pretrained(world["start"])
    groups = per_module_param_groups(apply_policy(model, cfg), cfg, weight_decay=0.1)
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs["vision"] == 2e-6 and lrs["connector"] == 1e-4 and lrs["llm"] == 1e-4
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))


@pytest.mark.parametrize("merge", [True, False])
def test_instruct_lora(world, tmp_path, merge):
    cfg, _ = _run(world, tmp_path, "instruct", "instruct_train.json", modules={"llm": {"mode": "lora"}},
                  lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge_lora=merge)
    adapter = os.path.join(cfg.output_dir, "llm_adapter")
    assert os.path.isdir(adapter) is (not merge)
    before, after = weights(world["start"]), weights(cfg.output_dir)
    ch = changed_prefixes(before, after)
    # merged: the LLM weights moved; kept: the base weights are the input's, the adapter carries the change
    assert ch == {"vision_tower": False, "connector": True, "llm": merge, "image_newline": True}
    model = MultimodalLM.from_pretrained(cfg.output_dir)
    ids = torch.tensor([[5, 6, 7, 8]])
    start = MultimodalLM.from_pretrained(world["start"])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, start(input_ids=ids).logits)


def test_instruct_lora_kept_equals_merged(world, tmp_path):
    outs = {}
    for merge in (True, False):
        cfg, _ = _run(world, tmp_path / str(merge), "instruct", "instruct_train.json",
                      modules={"llm": {"mode": "lora"}}, lora={"r": 4, "alpha": 8, "dropout": 0.0}, merge_lora=merge)
        m = MultimodalLM.from_pretrained(cfg.output_dir)
        with torch.no_grad():
            outs[merge] = m(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits
    torch.testing.assert_close(outs[True], outs[False], atol=1e-5, rtol=1e-5)


def test_instruct_qlora_bitsandbytes_4bit(world, tmp_path):
    cfg, summary = _run(world, tmp_path, "instruct", "instruct_train.json", modules={"llm": {"mode": "qlora"}},
                        lora={"r": 4, "alpha": 8, "dropout": 0.0})
    assert summary["steps"] == 2
    ch = changed_prefixes(weights(world["start"]), weights(cfg.output_dir))
    assert ch == {"vision_tower": False, "connector": True, "llm": True, "image_newline": True}


def test_qlora_quantizes_the_llm_linears(world):
    import bitsandbytes as bnb

    cfg = TrainConfig.from_dict(stage_dict("instruct", "/tmp/unused", world["start"], "x.json",
                                           modules={"llm": {"mode": "qlora"}}))
    model = MultimodalLM.from_pretrained(world["start"])
    apply_policy(model, cfg)
    kinds = {type(m).__name__ for m in model.llm.modules()}
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.llm.modules()), kinds
    trainable = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_checkpoints_are_marked_complete_and_resume_auto(world, tmp_path):
    cfg, _ = _run(world, tmp_path, "align", "captions_train.json", max_steps=3, save_steps=1, save_total_limit=2)
    ckpts = sorted(d for d in os.listdir(cfg.output_dir) if d.startswith("checkpoint-"))
    assert ckpts == ["checkpoint-2", "checkpoint-3"]  # keep the last N
    assert all(os.path.exists(os.path.join(cfg.output_dir, c, COMPLETE_MARKER)) for c in ckpts)
    # a checkpoint without its marker (a run killed while saving) is never resumed from
    os.remove(os.path.join(cfg.output_dir, "checkpoint-3", COMPLETE_MARKER))
    assert latest_checkpoint(cfg.output_dir).endswith("checkpoint-2")
    cfg2 = TrainConfig.from_dict({**cfg.to_dict(), "resume": "auto", "max_steps": 4,
                                  "data": [d.__dict__ for d in cfg.data],
                                  "modules": {}, "lora": cfg.lora.__dict__})
    summary = run_stage(cfg2)
    assert summary["steps"] == 4
    assert latest_checkpoint(cfg.output_dir).endswith("checkpoint-4")


def test_crash_while_saving_leaves_previous_checkpoint_usable(world, tmp_path, monkeypatch):
    from transformers import Trainer

    calls = {"n": 0}
    original = Trainer._save_optimizer_and_scheduler

    def flaky(self, output_dir):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed while saving")
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", flaky)
    with pytest.raises(KeyboardInterrupt):
        _run(world, tmp_path, "align", "captions_train.json", max_steps=3, save_steps=1)
    out = str(tmp_path / "align")
    assert os.path.isdir(os.path.join(out, "checkpoint-2"))  # partly written ...
    assert latest_checkpoint(out).endswith("checkpoint-1")  # ... and ignored
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", original)
    cfg, summary = _run(world, tmp_path, "align", "captions_train.json", max_steps=3, save_steps=1, resume="auto")
    assert summary["steps"] == 3


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown stage 'pretrain'; known: align, gen, instruct, multitask"):
        TrainConfig.from_dict({"stage": "pretrain", "output_dir": "x", "model": "tiny"})
    with pytest.raises(ValueError, match="set 'init_from'"):
        TrainConfig.from_dict({"stage": "align", "output_dir": "x"})
    with pytest.raises(ValueError, match="unknown module 'projector'"):
        TrainConfig.from_dict({"stage": "align", "output_dir": "x", "model": "tiny",
                               "modules": {"projector": "full"}})
    with pytest.raises(ValueError, match="module mode 'half'"):
        TrainConfig.from_dict({"stage": "align", "output_dir": "x", "model": "tiny",
                               "modules": {"llm": {"mode": "half"}}})
    y = tmp_path / "c.yaml"
    y.write_text("stage: align\noutput_dir: out\nmodel: tiny\nbatch: 3\n")
    with pytest.raises(ValueError, match=r"c.yaml: unknown config field 'batch'"):
        TrainConfig.load(str(y))


def test_bf16_accumulation_checkpointing_and_tensorboard(world, tmp_path):
    cfg, summary = _run(world, tmp_path, "multitask", "vqa_train.json", bf16=True, gradient_accumulation_steps=2,
                        gradient_checkpointing=True, report_to=["tensorboard"],
                        modules={"vision": {"mode": "full", "lr": 1e-3}})
    assert summary["steps"] == 2
    tb = os.path.join(cfg.output_dir, "tensorboard")
    assert any(f.startswith("events.out.tfevents") for _, _, fs in os.walk(tb) for f in fs)
    logged = [json.loads(line) for line in open(os.path.join(cfg.output_dir, "metrics.jsonl"))]
    assert any("tokens_per_s" in r for r in logged)
    ch = changed_prefixes(weights(world["start"]), weights(cfg.output_dir))
    assert all(ch.values())


def test_encoder_pretraining_pools_every_tile_of_an_image():
    """views="tiles": an image's embedding is the mean over all its AnyRes tiles' pooled features."""
    import torch

    from train_stages.encoder_pretrain import ImageHead, TileBank

    tiles = [torch.randn(n, 3, 4, 4) for n in (1, 3, 2)]
    bank = TileBank(tiles)
    batch, owner, rows = bank.batch(torch.tensor([2, 0]))
    assert torch.equal(batch, torch.cat([tiles[2], tiles[0]])) and owner.tolist() == [0, 0, 1]
    assert rows.tolist() == [4, 5, 0]  # rows of the flat bank: what per-tile targets are indexed with
    head = ImageHead(5, 2)
    feats = torch.randn(3, 7, 5)  # (tiles, patches, C)
    got = head(feats, owner, 2)
    want = head.proj(head.norm(torch.stack([feats[:2].mean((0, 1)), feats[2].mean(0)])))
    assert torch.allclose(got, want, atol=1e-6)

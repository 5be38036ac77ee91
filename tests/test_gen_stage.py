"""The gen stage: only the image-generation head trains; understanding is bit-identical afterwards; the output
reloads with its head; resume; `mllm train --stage gen`; the gen data path (left-padded BOS prompts, bad records).

    .venv/bin/python -m pytest -q tests/test_gen_stage.py
"""
from __future__ import annotations

import json
import os

import pytest
import torch

from mllm.model import MultimodalLM
from train_stages.freeze import apply_policy
from train_stages.gen_data import GenCollator, GenDataset, read_gen_records
from train_stages.runner import run_stage
from train_stages.specs import TrainConfig

from ._tiny import make_batch
from ._train_fixtures import make_start, stage_dict, weights

HEAD = {"num_queries": 4, "image_size": 32,
        "dit": {"preset": "tiny", "input_size": 32, "hidden_size": 32, "depth": 2, "num_heads": 2}}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data_pipelines.shapes.gen import make_gen_data

    root = str(tmp_path_factory.mktemp("gen"))
    data = os.path.join(root, "gen_data")
    make_gen_data(data, seed=0, n_train=16, n_test=4, size=32)
    return {"root": root, "start": make_start(root), "train": os.path.join(data, "gen_train.json")}


def _cfg(world, out, **extra) -> TrainConfig:
    extra.setdefault("gen_head", HEAD)
    return TrainConfig.from_dict(stage_dict("gen", str(out), world["start"], world["train"], **extra))


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    cfg = _cfg(world, tmp_path_factory.mktemp("run") / "gen")
    return cfg, run_stage(cfg)


def _understanding_logits(model) -> torch.Tensor:
    batch = make_batch(model, [("USER: <image>\nWhat colour is the circle? ASSISTANT:", [(32, 48)]),
                               ("USER: How many shapes are there? ASSISTANT:", [])], seed=3)
    with torch.no_grad():
        return model(**batch).logits


def test_gen_stage_changes_only_the_head_and_understanding_is_bit_identical(world, trained):
    cfg, summary = trained
    assert summary["steps"] == 2 and summary["first_loss"] > 0
    before, after = weights(world["start"]), weights(cfg.output_dir)
    head_keys = {k for k in after if k.startswith("gen_head.")}
    assert head_keys and set(after) - head_keys == set(before)
    for key, tensor in before.items():  # every tensor outside the head, bit for bit
        assert torch.equal(tensor, after[key]), key
    # the zero-initialised parts of the DiT (adaLN-Zero, final layer, cross-attention output) have moved
    for key in ("gen_head.dit.final_layer.linear.weight", "gen_head.dit.blocks.0.cross_attn.proj.weight",
                "gen_head.dit.blocks.0.adaLN_modulation.1.weight"):
        assert after[key].abs().sum() > 0, key
    start, out = MultimodalLM.from_pretrained(world["start"]), MultimodalLM.from_pretrained(cfg.output_dir)
    assert start.gen_head is None and out.gen_head is not None
    assert torch.equal(_understanding_logits(start), _understanding_logits(out))


def test_output_reloads_with_its_head(trained):
    cfg, _ = trained
    model = MultimodalLM.from_pretrained(cfg.output_dir)
    assert model.config.gen_head.num_queries == 4 and model.config.gen_head.dit.hidden_size == 32
    saved = weights(cfg.output_dir)
    for key, tensor in model.gen_head.state_dict().items():
        assert torch.equal(tensor, saved[f"gen_head.{key}"]), key
    a = model.generate_images(["a red circle at the top"], steps=3, seed=5)
    b = model.generate_images(["a red circle at the top"], steps=3, seed=5)
    assert a.shape == (1, 3, 32, 32) and torch.equal(a, b)
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0
    # a gen-stage output trained further keeps its head (no fresh one), and a different head is refused
    cfg2 = TrainConfig.from_dict({**stage_dict("gen", "/tmp/unused", cfg.output_dir, "x.json"), "gen_head": None})
    from train_stages.runner import load_start_model

    again = load_start_model(cfg2)
    assert torch.equal(again.gen_head.connector[1].weight, model.gen_head.connector[1].weight)
    other = TrainConfig.from_dict({**stage_dict("gen", "/tmp/unused", cfg.output_dir, "x.json"),
                                   "gen_head": {**HEAD, "num_queries": 8}})
    with pytest.raises(ValueError, match="differs from the head"):
        load_start_model(other)


def test_freeze_policy_of_the_gen_stage(world):
    cfg = _cfg(world, "/tmp/unused")
    model = MultimodalLM.from_pretrained(world["start"])
    model.add_gen_head(HEAD)
    groups = apply_policy(model, cfg)
    assert [n for n, ps in groups.items() if ps] == ["gen_head"]
    assert sum(p.numel() for p in groups["gen_head"]) == sum(p.numel() for p in model.gen_head.parameters())
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.startswith("gen_head."))


def test_resume_of_a_gen_checkpoint_equals_an_uninterrupted_run(world, tmp_path):
    straight = _cfg(world, tmp_path / "straight", max_steps=4)
    run_stage(straight)
    cfg = _cfg(world, tmp_path / "resumed", max_steps=4, save_steps=2)
    run_stage(cfg)
    ckpt = os.path.join(cfg.output_dir, "checkpoint-2")
    assert any(k.startswith("gen_head.") for k in weights(ckpt))  # the Trainer's checkpoint keeps the head
    # drop the final output and the last checkpoint: resume from step 2 to 4
    import shutil

    shutil.rmtree(os.path.join(cfg.output_dir, "checkpoint-4"))
    resumed = TrainConfig.from_dict({**cfg.to_dict(), "resume": "auto", "data": [d.__dict__ for d in cfg.data],
                                     "modules": {}, "lora": cfg.lora.__dict__})
    summary = run_stage(resumed)
    assert summary["steps"] == 4
    a, b = weights(straight.output_dir), weights(cfg.output_dir)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_mllm_train_stage_gen_from_a_yaml_config(world, tmp_path):
    import yaml

    from mllm.app.cli import main

    out = tmp_path / "cli_gen"
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(stage_dict("gen", str(out), world["start"], world["train"], gen_head=HEAD,
                                              max_steps=1)))
    assert main(["train", "--stage", "gen", "--config", str(path)]) == 0
    assert json.load(open(out / "summary.json"))["steps"] == 1
    assert MultimodalLM.from_pretrained(str(out)).gen_head is not None


def test_gen_data_left_pads_bos_prompts_like_sampling_does(world):
    model = MultimodalLM.from_pretrained(world["start"])
    records = read_gen_records(world["train"])
    ds = GenDataset(records, model.tokenizer, image_size=32)
    samples = [ds[i] for i in range(4)]
    batch = GenCollator(model.tokenizer.pad_token_id)(samples)
    ids, mask = model.gen_prompt_inputs([r["prompt"] for r in records[:4]])
    assert torch.equal(batch["input_ids"], ids) and torch.equal(batch["attention_mask"], mask)
    assert bool((batch["attention_mask"][:, -1] == 1).all())  # left padding: every row ends in a real token
    first = batch["attention_mask"].argmax(dim=1)
    assert all(int(batch["input_ids"][i, first[i]]) == model.tokenizer.bos_token_id for i in range(4))
    assert batch["gen_images"].shape == (4, 3, 32, 32)
    assert 0.0 <= float(batch["gen_images"].min()) and float(batch["gen_images"].max()) <= 1.0
    assert float(batch["gen_images"].max()) > 0.9  # the light background, not an all-dark tensor


def test_bad_gen_records_are_counted_not_fatal(world, tmp_path):
    records = json.load(open(world["train"]))
    root = os.path.dirname(world["train"])
    bad = [dict(records[0], image="images/gen_train/does_not_exist.png"), {"id": "x", "image": records[1]["image"]},
           *records[2:]]
    for r in bad:
        if r["image"] and not os.path.isabs(r["image"]):
            r["image"] = os.path.join(root, r["image"])
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    cfg = _cfg({**world, "train": str(path)}, tmp_path / "out", max_steps=1, per_device_train_batch_size=16)
    summary = run_stage(cfg)
    assert summary["data"]["by_reason"] == {"malformed_record": 1, "missing_image": 1}
    with pytest.raises(ValueError, match=r"bad.json\[1\] record 'x' field 'prompt'"):
        read_gen_records(str(path), strict=True)


def test_config_errors(world, tmp_path):
    model = MultimodalLM.from_pretrained(world["start"])
    with pytest.raises(ValueError, match="no image-generation head"):
        model.generate_images(["a red circle at the top"])
    with pytest.raises(ValueError, match="gen_loss: the model has no image-generation head"):
        model.gen_loss(torch.tensor([[0, 5, 6]]), None, torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"gen_head: unknown field\(s\) \['num_querys'\]"):
        run_stage(_cfg(world, tmp_path / "x", gen_head={"num_querys": 4}))
    cfg = TrainConfig.from_dict({**stage_dict("align", str(tmp_path / "a"), world["start"], world["train"]),
                                 "data": [{"path": world["train"], "format": "gen"}]})
    with pytest.raises(ValueError, match="format 'gen'"):
        run_stage(cfg)
    model.add_gen_head(HEAD)
    with pytest.raises(ValueError, match="already has an image-generation head"):
        model.add_gen_head(HEAD)


def test_demo_gen_step_writes_metrics_and_a_grid(world, tmp_path):
    import dataclasses

    from PIL import Image

    from mllm.app.demo_gen import GRID_FILE, LOSS_FILE, METRICS_FILE, QUICK_GEN, resolve_gen_plan, run_gen_step

    plan = dataclasses.replace(QUICK_GEN, gen_head=HEAD, bf16=False)
    row, metrics = run_gen_step(str(tmp_path), str(tmp_path / "data"), world["start"], plan)
    assert row["step"].startswith("train + eval: gen") and row["seconds"] > 0 and row["loss"] > 0
    saved = json.load(open(tmp_path / METRICS_FILE))
    for key in ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy", "shape_accuracy",
                "position_accuracy", "count_accuracy", "fd", "fd_real_vs_real", "n_images", "seconds", "train",
                "sampling"):
        assert key in saved, key
    assert saved["seconds"]["cpu_total"] > 0
    assert len(saved["grid_verdicts"]) == len(saved["grid_prompts"]) == 8
    assert all(v == "ok" or v for v in saved["grid_verdicts"])
    assert saved["cli_example"]["prompt"] == "a red circle at the top" and saved["cli_example"]["verdict"]
    assert saved["n_images"] == 8 and saved["train"]["steps"] == 4 and 0.0 <= saved["colour_shape_accuracy"] <= 1.0
    assert saved["fd"] >= 0.0 and saved["fd_real_vs_real"] >= 0.0
    with Image.open(tmp_path / GRID_FILE) as grid:  # 8 images in one row, each with its prompt and verdict
        assert grid.width > 2 * grid.height and grid.width >= 8 * 100
    with Image.open(tmp_path / LOSS_FILE) as curve:
        assert curve.width > 300
    assert MultimodalLM.from_pretrained(str(tmp_path / "gen")).gen_head is not None
    # the demo's own plan object: smoke runs get the quick gen plan, with the demo's seed
    demo_like = type("P", (), {"max_steps": 4, "seed": 3, "bf16": False})()
    assert resolve_gen_plan(demo_like).max_steps == 4 and resolve_gen_plan(demo_like).seed == 3


def test_ema_callback_averages_and_the_saved_head_is_the_average(tmp_path):
    from types import SimpleNamespace

    from train_stages.trainer import EMA_FILE, EMACallback

    lin = torch.nn.Linear(2, 1)
    lin.bias.requires_grad_(False)  # only trainable parameters are averaged
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema = EMACallback(lin, decay=0.5)
    for step, value in ((1, 3.0), (2, 5.0)):  # warm-up decay min(0.5, (1+s)/(10+s)) = 2/11, then 3/12
        with torch.no_grad():
            lin.weight.fill_(value)
        ema.on_step_end(None, SimpleNamespace(global_step=step), None)
    expected = (1.0 * 2 / 11 + 3.0 * 9 / 11) * 3 / 12 + 5.0 * 9 / 12
    assert ema.names == ["weight"]
    ema.save_to(str(tmp_path))
    ema.on_train_end(None, None, None)
    torch.testing.assert_close(lin.weight, torch.full((1, 2), expected))
    other = torch.nn.Linear(2, 1)
    other.bias.requires_grad_(False)
    restored = EMACallback(other, decay=0.5, resume_from=str(tmp_path))
    torch.testing.assert_close(restored.shadow[0], torch.full((1, 2), expected))
    assert (tmp_path / EMA_FILE).exists()
    with pytest.raises(ValueError, match="has no ema.safetensors"):
        EMACallback(lin, decay=0.5, resume_from=str(tmp_path / "elsewhere"))
    with pytest.raises(ValueError, match=r"decay must be in \(0, 1\)"):
        EMACallback(lin, decay=1.0)


def test_gen_stage_with_ema_saves_the_average_and_resumes_it(world, tmp_path):
    plain = _cfg(world, tmp_path / "plain", max_steps=4)
    run_stage(plain)
    straight = _cfg(world, tmp_path / "straight", max_steps=4, ema_decay=0.9)
    run_stage(straight)
    key = "gen_head.dit.final_layer.linear.weight"
    a, b = weights(plain.output_dir), weights(straight.output_dir)
    assert not torch.equal(a[key], b[key])  # the saved head is the average, not the last step's weights
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("gen_head."))
    cfg = _cfg(world, tmp_path / "resumed", max_steps=4, save_steps=2, ema_decay=0.9)
    run_stage(cfg)
    import shutil

    shutil.rmtree(os.path.join(cfg.output_dir, "checkpoint-4"))
    resumed = TrainConfig.from_dict({**cfg.to_dict(), "resume": "auto", "data": [d.__dict__ for d in cfg.data],
                                     "modules": {}, "lora": cfg.lora.__dict__})
    run_stage(resumed)
    c = weights(cfg.output_dir)
    for k in b:
        torch.testing.assert_close(b[k], c[k], rtol=0, atol=1e-6, msg=k)
    with pytest.raises(ValueError, match="ema_decay is for the gen stage"):
        run_stage(TrainConfig.from_dict(stage_dict("align", str(tmp_path / "a"), world["start"], world["train"],
                                                   ema_decay=0.9)))

"""A stage's data on one process: text-only batches in stages whose text path trains nothing (align), bad
records skipped and counted (strict mode naming file, line, record and field), `format: auto` and
concatenation as the defaults."""
from __future__ import annotations

import json
import os

import pytest
import torch

from mllm.model import MultimodalLM
from train_stages.freeze import apply_policy
from train_stages.runner import needs_vision_every_step, run_stage
from train_stages.specs import TrainConfig

from ._train_fixtures import changed_prefixes, make_start, make_world, stage_dict, weights


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("edge"))
    data = make_world(root, n_train=16, n_test=4)
    caps = json.load(open(os.path.join(data, "captions_train.json")))
    for r in caps:
        r["image"] = os.path.join(data, r["image"]) if not os.path.isabs(r["image"]) else r["image"]
    text = [{"id": f"t{i}", "conversations": [{"from": "human", "value": f"Say {i}."},
                                             {"from": "gpt", "value": f"{i} it is."}]} for i in range(8)]
    bad = [{"id": "no_image_file", "image": "/nonexistent/x.png",
            "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": "A."}]},
           {"id": "bad_role", "conversations": [{"from": "robot", "value": "hi"}, {"from": "gpt", "value": "x"}]}]
    mixed = os.path.join(root, "mixed.json")
    json.dump(caps[:8] + text + bad, open(mixed, "w"))
    return {"data": data, "mixed": mixed, "start": make_start(root), "root": root, "n_caps": 8}


def test_align_with_text_only_batches_trains_on_one_process(world, tmp_path):
    # batch 4, modality-grouped: the 8 text-only records make two text-only batches, whose loss reaches no
    # trainable parameter in stage 1 (only the connector learns)
    cfg = TrainConfig.from_dict(stage_dict("align", str(tmp_path / "a"), world["start"], world["mixed"],
                                           max_steps=-1, num_train_epochs=1))
    from train_stages.data import build_training_data

    data = build_training_data(cfg, MultimodalLM.from_pretrained(world["start"]))
    order = list(iter(data.sampler))
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert any(all(data.dataset.modalities[j] == "text" for j in b) for b in batches), "no text-only batch"
    summary = run_stage(cfg)
    assert summary["steps"] == len(batches), summary
    assert summary["data"]["total"] == 2 and set(summary["data"]["by_reason"]) == {"missing_image", "unknown_role"}, \
        summary["data"]
    ch = changed_prefixes(weights(world["start"]), weights(cfg.output_dir))
    assert ch == {"vision_tower": False, "connector": True, "llm": False, "image_newline": True}
    assert all(torch.isfinite(v).all() for v in weights(cfg.output_dir).values())


@pytest.mark.parametrize("stage,modules", [("align", {}), ("multitask", {}), ("instruct", {"llm": {"mode": "lora"}}),
                                            ("multitask", {"llm": {"mode": "frozen"}})])
def test_a_text_only_batch_backpropagates_in_every_stage(world, stage, modules):
    cfg = TrainConfig.from_dict(stage_dict(stage, "/tmp/unused", world["start"], "x.json", modules=modules))
    model = MultimodalLM.from_pretrained(world["start"])
    apply_policy(model, cfg)
    model.always_run_vision = needs_vision_every_step(model, world=1)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()  # "element 0 of tensors does not require grad" without a path to a trainable parameter
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None for p in trainable if p.grad is not None)
    assert torch.isfinite(loss)


def test_without_the_guard_align_text_only_has_no_graph(world):
    """What the guard prevents (the crash seen on one process)."""
    cfg = TrainConfig.from_dict(stage_dict("align", "/tmp/unused", world["start"], "x.json"))
    model = MultimodalLM.from_pretrained(world["start"])
    apply_policy(model, cfg)
    model.always_run_vision = False
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with pytest.raises(RuntimeError, match="does not require grad"):
        model(input_ids=ids, labels=ids).loss.backward()


def test_strict_mode_names_file_line_record_and_field(world, tmp_path):
    cfg = TrainConfig.from_dict(stage_dict("align", str(tmp_path / "s"), world["start"], world["mixed"],
                                           strict_data=True))
    with pytest.raises(ValueError) as e:
        run_stage(cfg)
    msg = str(e.value)
    assert "mixed.json[17] record 'bad_role' field 'conversations[0].from'" in msg and "[unknown_role]" in msg, msg


def test_auto_format_and_concatenation_by_default(world, tmp_path):
    """A ShareGPT file without `format:` beside a LLaVA file: detected; no weights -> every record once."""
    from train_stages.data import build_training_data

    share = tmp_path / "chat.jsonl"
    with open(share, "w") as f:
        for i in range(3):
            f.write(json.dumps({"messages": [{"role": "user", "content": f"hi {i}"},
                                             {"role": "assistant", "content": f"hello {i}"}]}) + "\n")
    vqa = os.path.join(world["data"], "vqa_train.json")
    n_vqa = len(json.load(open(vqa)))
    d = stage_dict("instruct", str(tmp_path / "o"), world["start"], vqa)
    d["data"] = [{"path": vqa}, {"path": str(share)}]
    cfg = TrainConfig.from_dict(d)
    model = MultimodalLM.from_pretrained(world["start"])
    data = build_training_data(cfg, model)
    ids = [r.id for r in data.dataset.records]
    assert len(ids) == n_vqa + 3 and len(set(ids)) == len(ids)  # each record exactly once


def test_streaming_stage_trains_from_a_stage_config(world, tmp_path):
    d = stage_dict("align", str(tmp_path / "st"), world["start"], world["mixed"], streaming=True, max_steps=2)
    summary = run_stage(TrainConfig.from_dict(d))
    assert summary["steps"] == 2
    ch = changed_prefixes(weights(world["start"]), weights(str(tmp_path / "st")))
    assert ch["connector"] and not ch["llm"]

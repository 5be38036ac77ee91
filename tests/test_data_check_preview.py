"""`mllm data check` (formats, counts, skips by reason with examples, token lengths) and `mllm data preview`
(training text with targets and image-token runs marked) agree with what training builds."""
from __future__ import annotations

import json
import os

import pytest

from data_pipelines.check import builder_for_config, geometry_for_config
from data_pipelines.processor import MultimodalProcessor
from mllm.app.cli import main
from mllm.model import MultimodalLM
from mllm.presets import get_preset, offline


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from data_pipelines.shapes import make_shapes

    root = tmp_path_factory.mktemp("check")
    make_shapes(str(root / "s"), n_train=6, n_test=2)
    vqa = json.load(open(root / "s" / "vqa_train.json"))
    for r in vqa:
        if "image" in r:
            r["image"] = str(root / "s" / r["image"]) if isinstance(r["image"], str) else r["image"]
    bad = [{"id": "gone", "image": "/nope/x.png", "conversations": [{"from": "human", "value": "<image>\nQ?"},
                                                                   {"from": "gpt", "value": "A."}]},
           {"id": "two_markers", "image": vqa[0]["image"],
            "conversations": [{"from": "human", "value": "<image><image>\nQ?"}, {"from": "gpt", "value": "A."}]}]
    path = root / "mixed.json"
    json.dump(vqa[:10] + bad, open(path, "w"))
    chat = root / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello there"}]}) + "\n{broken\n")
    return {"mixed": str(path), "chat": str(chat), "root": root, "n_good": 10}


@pytest.mark.parametrize("preset", ["tiny", "llava-1.5-7b", "llava-next-7b", "siglip-qwen2.5-7b", "blip2-opt-2.7b"])
def test_geometry_from_config_equals_the_built_models(preset):
    import torch

    cfg = offline(get_preset(preset))
    if preset != "tiny":
        cfg.llm.config.update(num_hidden_layers=1, hidden_size=64, intermediate_size=64, num_attention_heads=2,
                              num_key_value_heads=2, ffn_dim=64, word_embed_proj_dim=64)
        cfg.vision.config.update(num_hidden_layers=1)
    with torch.device("meta"):
        model = MultimodalLM.build(cfg)
    assert geometry_for_config(cfg) == model.geometry


def test_check_reports_formats_counts_skips_and_lengths(world, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert main(["data", "check", world["mixed"], world["chat"], "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.load(open(out))
    mixed, chat = rep["files"]
    assert mixed["format"] == "llava" and chat["format"] == "sharegpt"
    assert mixed["records"] == 12 and mixed["usable"] == 10
    assert mixed["skipped"]["total"] == 2 and len(mixed["skipped"]["by_reason"]) == 2, mixed["skipped"]
    assert "missing_image" in mixed["skipped"]["by_reason"] and "'gone'" in mixed["examples"]["missing_image"][0]
    assert chat["usable"] == 1 and chat["skipped"]["total"] == 1
    # the lengths are the training builder's
    model = MultimodalLM.build(get_preset("tiny"))
    builder = MultimodalProcessor.for_model(model)
    from data_pipelines.formats import read_records

    from data_pipelines.records import RecordError

    want = []
    for r in read_records(world["mixed"]):
        try:
            want.append(builder.encode_sample(r)["length"])
        except RecordError:
            pass
    want.sort()
    assert len(want) == 10
    assert mixed["lengths"]["max"] == want[-1] and mixed["lengths"]["min"] == want[0]
    assert sum(b["count"] for b in mixed["histogram"]) == 10
    assert "format llava, 12 record(s), 10 usable, 2 skipped" in text and "#" in text and "e.g." in text


def test_preview_marks_targets_and_image_runs(world, capsys):
    assert main(["data", "preview", world["mixed"], "--index", "0"]) == 0
    text = capsys.readouterr().out
    builder = builder_for_config(get_preset("tiny"), MultimodalLM.build(get_preset("tiny")).tokenizer)
    from data_pipelines.formats import read_records

    rec = next(iter(read_records(world["mixed"])))
    sample = builder.encode_sample(rec)
    n_img = builder.geometry.num_image_tokens(sample["image_sizes"][0])
    assert f"<image ×{n_img}>" in text and "⟦" in text and "⟧" in text
    first_answer = rec.messages[1]["content"]
    import re

    spans = re.findall("⟦(.*?)⟧", text, re.S)
    assert any(first_answer in sp for sp in spans), spans  # the assistant's answer is what the loss is on
    assert "USER:" in text.split("⟦")[0]  # the prompt is not supervised
    assert main(["data", "preview", world["mixed"], "--index", "99"]) == 1

"""save_pretrained / from_pretrained: identical logits, sharding, strict keys, safetensors only."""
from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from mllm.checkpoint import load_state_dict_files
from mllm.model import MultimodalLM

from ._tiny import make_batch, tiny_config

CASES = {
    "anyres-mlp-tied": dict(anyres=True),
    "fixed-mlp-untied": dict(anyres=False, tie=False),
    "qformer": dict(anyres=False, connector="qformer"),
    "siglip-anyres-qwen2": dict(anyres=True, tower="hf_siglip", llm_type="qwen2"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_identical_logits(tmp_path, case):
    torch.manual_seed(1)
    m = MultimodalLM.build(tiny_config(**CASES[case])).eval()
    with torch.no_grad():  # perturb the zero/constant-initialised parameters so the test can see them
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    batch = make_batch(m, [("hello <image> world", [(30, 70)]), ("text only", [])])
    with torch.no_grad():
        ref = m(**batch).logits
    m.save_pretrained(str(tmp_path))
    files = set(os.listdir(tmp_path))
    assert {"mllm_config.json", "config.json", "model.safetensors", "tokenizer.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in files)
    m2 = MultimodalLM.from_pretrained(str(tmp_path))
    with torch.no_grad():
        out = m2(**batch).logits
    assert torch.equal(ref, out)
    assert m2.image_token_id == m.image_token_id
    assert m2.geometry == m.geometry


def test_tied_weights_stored_once_and_retied(tmp_path):
    m = MultimodalLM.build(tiny_config(tie=True))
    m.save_pretrained(str(tmp_path))
    keys = set(load_file(str(tmp_path / "model.safetensors")))
    assert "llm.model.embed_tokens.weight" in keys and "llm.lm_head.weight" not in keys
    m2 = MultimodalLM.from_pretrained(str(tmp_path))
    assert m2.llm.lm_head.weight.data_ptr() == m2.llm.model.embed_tokens.weight.data_ptr()


def test_sharded_round_trip(tmp_path):
    m = MultimodalLM.build(tiny_config()).eval()
    m.save_pretrained(str(tmp_path), max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1 and not (tmp_path / "model.safetensors").exists()
    m2 = MultimodalLM.from_pretrained(str(tmp_path))
    for (k, a), (k2, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert k == k2 and torch.equal(a, b)


def test_missing_and_unexpected_keys_are_errors(tmp_path):
    m = MultimodalLM.build(tiny_config())
    m.save_pretrained(str(tmp_path))
    path = str(tmp_path / "model.safetensors")
    state = load_file(path)
    dropped = dict(state)
    dropped.pop("connector.linear_1.weight")
    save_file(dropped, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing 1 key\(s\) \['connector.linear_1.weight'\]"):
        MultimodalLM.from_pretrained(str(tmp_path))
    extra = dict(state)
    extra["connector.surprise"] = torch.zeros(1)
    save_file(extra, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"unexpected 1 key\(s\) \['connector.surprise'\]"):
        MultimodalLM.from_pretrained(str(tmp_path))


def test_not_a_checkpoint_and_no_pickles(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        MultimodalLM.from_pretrained(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="not an mllm checkpoint"):
        MultimodalLM.from_pretrained(str(tmp_path))
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="only safetensors"):
        load_state_dict_files(str(tmp_path))


def test_saved_config_is_offline_and_self_contained(tmp_path):
    m = MultimodalLM.build(tiny_config())
    m.save_pretrained(str(tmp_path))
    cfg = json.loads((tmp_path / "mllm_config.json").read_text())
    assert cfg["vision"]["name_or_path"] is None and cfg["llm"]["name_or_path"] is None
    assert cfg["llm"]["config"]["model_type"] == "llama"
    assert cfg["llm"]["config"]["vocab_size"] == m.llm.config.vocab_size

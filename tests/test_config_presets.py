"""Typed configs, YAML / command-line overrides, registries and presets (real ones built on meta)."""
from __future__ import annotations

import pytest
import torch

from connectors import CONNECTORS, build_connector
from mllm.config import ConnectorConfig, LLMConfig, ModelConfig, apply_overrides, merge_yaml
from mllm.llm import load_llm
from mllm.model import MultimodalLM
from mllm.presets import PRESETS, get_preset, offline


def test_round_trip_json(tmp_path):
    cfg = get_preset("tiny")
    cfg.save(str(tmp_path / "c.json"))
    assert ModelConfig.load(str(tmp_path / "c.json")) == cfg


def test_overrides_and_yaml(tmp_path):
    cfg = apply_overrides(get_preset("tiny"), ["llm.config.num_hidden_layers=2", "anyres.enabled=false",
                                               "connector.kind=qformer", "image.mean=[0.5,0.5,0.5]"])
    assert cfg.llm.config["num_hidden_layers"] == 2 and cfg.anyres.enabled is False
    assert cfg.connector.kind == "qformer" and cfg.image.mean == (0.5, 0.5, 0.5)
    y = tmp_path / "o.yaml"
    y.write_text("llm:\n  config:\n    hidden_size: 96\nchat_template: chatml\n")
    cfg2 = merge_yaml(get_preset("tiny"), str(y))
    assert cfg2.llm.config["hidden_size"] == 96 and cfg2.llm.config["num_hidden_layers"] == 6
    assert cfg2.chat_template == "chatml"


def test_unknown_fields_are_named(tmp_path):
    with pytest.raises(ValueError, match="'llm.cofig'"):
        ModelConfig.from_dict({"llm": {"cofig": {}}})
    with pytest.raises(ValueError, match="unknown config field 'visoin'; did you mean vision"):
        apply_overrides(get_preset("tiny"), ["visoin.kind=hf_clip"])
    y = tmp_path / "bad.yaml"
    y.write_text("anyress: {}\n")
    with pytest.raises(ValueError, match="bad.yaml.*anyress"):
        merge_yaml(get_preset("tiny"), str(y))


def test_unknown_registry_keys_list_known():
    with pytest.raises(ValueError, match=r"unknown connector 'mlp3x'; known: mlp2x_gelu, qformer"):
        build_connector(ConnectorConfig(kind="mlp3x"), 8, 8)
    with pytest.raises(ValueError, match=r"unknown preset 'huge'; known: .*tiny"):
        get_preset("huge")
    with pytest.raises(ValueError, match=r"unknown LLM loader 'gguf'; known: hf_causal_lm"):
        load_llm(LLMConfig(kind="gguf"))
    assert CONNECTORS.keys() == ["mlp2x_gelu", "qformer"]


def test_tiny_preset_builds_and_is_small():
    m = MultimodalLM.build(get_preset("tiny"))
    n = sum(p.numel() for p in m.parameters())
    assert 1e6 < n < 10e6
    assert m.geometry.tile_size == 48 and m.geometry.patch_size == 8
    # 64x64 -> best pinpoint 96x96 (2x2 tiles): base 6x6 + the 12x12 grid (square: no unpadding) + 12 newlines
    assert m.num_image_tokens((64, 64)) == 36 + 144 + 12


# expected sizes from the published models (vision + connector + LLM), in billions
REAL = {
    "llava-1.5-7b": (7.0, 7.2, 576),
    "llava-next-7b": (7.0, 7.2, None),
    "blip2-opt-2.7b": (3.0, 3.3, 32),
    "siglip-qwen2.5-7b": (7.9, 8.3, None),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_presets_construct_on_meta(name):
    lo, hi, tokens = REAL[name]
    cfg = offline(get_preset(name))
    with torch.device("meta"):
        m = MultimodalLM.build(cfg)
    n = sum(p.numel() for p in m.parameters()) / 1e9
    assert lo < n < hi, n
    if tokens is not None:
        assert m.num_image_tokens((480, 640)) == tokens
    hub = get_preset(name)
    assert hub.vision.name_or_path and hub.llm.name_or_path  # real presets name hub ids


def test_llava_next_preset_token_count_matches_known_value():
    cfg = offline(get_preset("llava-next-7b"))
    with torch.device("meta"):
        m = MultimodalLM.build(cfg)
    # 336x336 -> pinpoint 336x672 (1x2 tiles): base 24x24 + the 24x48 grid unpadded to 24x24 + 24 newlines
    assert m.num_image_tokens((336, 336)) == 576 + 24 * 24 + 24


def test_every_preset_listed():
    assert set(PRESETS.keys()) == {"tiny", "llava-1.5-7b", "llava-next-7b", "blip2-opt-2.7b", "siglip-qwen2.5-7b"}

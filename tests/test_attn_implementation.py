"""llm.attn_implementation / vision.attn_implementation reach the built transformers models."""
from __future__ import annotations

import pytest

from mllm.config import apply_overrides
from mllm.model import MultimodalLM

from ._tiny import tiny_config


def _attn(module) -> str:
    return module.config._attn_implementation


def test_default_is_sdpa():
    m = MultimodalLM.build(tiny_config())
    assert _attn(m.llm) == "sdpa" and _attn(m.vision_tower.model) == "sdpa"


def test_eager_reaches_llm_and_tower_and_survives_save_load(tmp_path):
    cfg = apply_overrides(tiny_config(), ["llm.attn_implementation=eager", "vision.attn_implementation=eager"])
    m = MultimodalLM.build(cfg)
    assert _attn(m.llm) == "eager" and _attn(m.vision_tower.model) == "eager"
    m.save_pretrained(str(tmp_path / "ck"))
    m2 = MultimodalLM.from_pretrained(str(tmp_path / "ck"))
    assert _attn(m2.llm) == "eager" and _attn(m2.vision_tower.model) == "eager"


def test_unknown_kernel_is_rejected():
    with pytest.raises(ValueError, match="llm.attn_implementation 'flash' is not one of sdpa, eager"):
        apply_overrides(tiny_config(), ["llm.attn_implementation=flash"])

"""Vision towers behind one registry, chosen by the exact key in ``VisionConfig.kind``.

    from mllm.config import VisionConfig
    from mllm.vision import VISION_TOWERS, build_vision_tower
    tower = build_vision_tower(VisionConfig(kind="hf_clip", config=dict(hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)))
    feats = tower(pixels)                  # (N, 3, S, S) -> (N, tower.num_tokens, tower.hidden_size)
    same = build_vision_tower(VisionConfig(kind="hf_clip", config=tower.arch_config()))  # offline rebuild

Keys: "hf_clip" (transformers CLIPVisionModel), "hf_siglip" (SiglipVisionModel), "open_clip" (open_clip's
``model.visual``: its own ViTs and timm ViT trunks such as SigLIP). See ``mllm.vision.hf`` and
``mllm.vision.open_clip_tower`` for what each reads from ``VisionConfig``. Every tower comes back in
float32 (the caller casts); open_clip is imported only when an "open_clip" tower is built.
"""
from __future__ import annotations

from typing import Callable

from ..config import VisionConfig
from ..registry import Registry
from .base import VisionTower
from .hf import build_hf_clip, build_hf_siglip
from .open_clip_tower import build_open_clip

VISION_TOWERS: Registry[Callable[[VisionConfig], VisionTower]] = Registry("vision tower")
VISION_TOWERS.add("hf_clip", build_hf_clip)
VISION_TOWERS.add("hf_siglip", build_hf_siglip)
VISION_TOWERS.add("open_clip", build_open_clip)


def build_vision_tower(cfg: VisionConfig) -> VisionTower:
    """Build the tower ``cfg.kind`` names (unknown kinds raise a ValueError listing the known ones)."""
    return VISION_TOWERS.get(cfg.kind)(cfg)


__all__ = ["VISION_TOWERS", "VisionTower", "build_vision_tower"]

"""HF transformers vision towers: "hf_clip" (CLIPVisionModel) and "hf_siglip" (SiglipVisionModel).

    from mllm.config import VisionConfig
    from mllm.vision import build_vision_tower
    tower = build_vision_tower(VisionConfig(kind="hf_clip", name_or_path="openai/clip-vit-large-patch14-336"))
    tower = build_vision_tower(VisionConfig(kind="hf_siglip", config=dict(hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8),
                               select_strategy="full"))             # random init, no hub
    feats = tower(pixel_values)                                    # (N, num_tokens, hidden_size)

``name_or_path`` is a hub id or a local directory (a full CLIPModel / SiglipModel checkpoint works too);
remote code is never run. ``config`` holds the HF config kwargs (random init when ``name_or_path`` is None;
when both are given they must agree) plus optional ``image_mean`` / ``image_std``.

The wrapped model keeps only what the features need: encoder layers after the deepest selected hidden
state, the post-layernorm and SigLIP's pooling head are removed, so they are neither computed nor stored.
``arch_config()`` still describes the full architecture, and a rebuild truncates the same way, so state
dict keys (``model.embeddings.*``, ``model.encoder.layers.{i}.*``, ...) match across both paths.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import torch
from transformers import (CLIPVisionConfig, CLIPVisionModel, PretrainedConfig, PreTrainedModel,
                          SiglipVisionConfig, SiglipVisionModel)
from transformers.utils import cached_file

from ..config import VisionConfig
from ..constants import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD
from .base import VisionTower, check_select_strategy, jsonable as _jsonable, resolve_feature_layers

OPENAI_CLIP_MEAN, OPENAI_CLIP_STD = CLIP_MEAN, CLIP_STD

# kind -> (config class, model class, default mean, default std)
_KINDS = {
    "hf_clip": (CLIPVisionConfig, CLIPVisionModel, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "hf_siglip": (SiglipVisionConfig, SiglipVisionModel, SIGLIP_MEAN, SIGLIP_STD),
}
_NORM_KEYS = ("image_mean", "image_std")


class HFVisionTower(VisionTower):
    """A CLIP / SigLIP vision model run block by block up to the deepest selected hidden state."""

    def __init__(self, kind: str, model: PreTrainedModel, arch: Dict[str, Any], feature_layer,
                 select_strategy: str, image_mean, image_std):
        super().__init__()
        self.kind = kind
        self._arch = dict(arch)  # full architecture (before truncation), for arch_config()
        config = model.config
        self.image_size = int(config.image_size)
        self.patch_size = int(config.patch_size)
        self.has_cls = hasattr(model.embeddings, "class_embedding")
        check_select_strategy(select_strategy, self.has_cls, f"{kind} ({type(model).__name__})")
        self.select_strategy = select_strategy
        self.feature_layers = resolve_feature_layers(feature_layer, config.num_hidden_layers)
        self.hidden_size = config.hidden_size * len(self.feature_layers)
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)

        # hidden state k is the output of layer k, so layers past max(k) never contribute
        model.encoder.layers = model.encoder.layers[: max(self.feature_layers)]
        model.post_layernorm = None
        if hasattr(model, "head"):
            model.head = None
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        model = self.model
        x = model.embeddings(pixel_values.to(self.dtype))  # (N, T, C), T = grid**2 (+1 CLS first)
        if hasattr(model, "pre_layrnorm"):  # CLIP normalises before the encoder; HF's hidden_states[0] too
            x = model.pre_layrnorm(x)
        states = [x]
        for layer in model.encoder.layers:
            x = layer(x, None)  # (N, T, C); GradientCheckpointingLayer checkpoints here when enabled
            states.append(x)
        feats = torch.cat([states[k] for k in self.feature_layers], dim=-1)  # (N, T, C * n_layers)
        if self.has_cls and self.select_strategy == "default":
            feats = feats[:, 1:]  # (N, grid**2, C * n_layers)
        return feats

    def arch_config(self) -> Dict[str, Any]:
        return dict(self._arch, image_mean=list(self.image_mean), image_std=list(self.image_std))

    def gradient_checkpointing_enable(self) -> None:
        # non-reentrant: correct even when the pixels (and a frozen patch embedding) need no grad
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.x
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def arch_dict(config: PretrainedConfig) -> Dict[str, Any]:
    """The architecture fields of an HF config: everything its class adds over ``PretrainedConfig``."""
    generic = set(PretrainedConfig().to_dict())
    return {k: v for k, v in config.to_dict().items() if k not in generic}


def build_hf_tower(cfg: VisionConfig, kind: Optional[str] = None) -> HFVisionTower:
    """Build ``kind`` ("hf_clip" | "hf_siglip"; default ``cfg.kind``) from a VisionConfig."""
    kind = kind or cfg.kind
    if kind not in _KINDS:
        raise ValueError(f"vision.kind {kind!r} is not an HF tower ({', '.join(_KINDS)})")
    config_cls, model_cls, default_mean, default_std = _KINDS[kind]
    overrides = dict(cfg.config or {})
    norm = {k: overrides.pop(k) for k in _NORM_KEYS if k in overrides}

    if cfg.name_or_path is None:
        known = set(config_cls().to_dict())
        unknown = sorted(set(overrides) - known)
        if unknown:  # HF configs swallow unknown kwargs; a typo would silently change nothing
            raise ValueError(f"vision.config: unknown {config_cls.__name__} field(s) {unknown}; known: "
                             f"{', '.join(sorted(arch_dict(config_cls())) + list(_NORM_KEYS))}")
        try:
            config = config_cls(**overrides)
        except (TypeError, ValueError) as e:
            raise ValueError(f"vision.config is not a valid {config_cls.__name__}: {e}") from None
        config._attn_implementation = cfg.attn_implementation  # what from_pretrained's argument sets
        model = model_cls(config)
        loaded_norm = None
    else:
        config = config_cls.from_pretrained(cfg.name_or_path)
        _check_agrees(config, overrides, cfg.name_or_path)
        model, info = model_cls.from_pretrained(cfg.name_or_path, config=config, dtype=torch.float32,
                                                output_loading_info=True,
                                                attn_implementation=cfg.attn_implementation)
        loaded_norm = _preprocessor_norm(cfg.name_or_path)
    arch = arch_dict(model.config)
    mean, std = _pick_norm(norm, loaded_norm, default_mean, default_std)
    tower = HFVisionTower(kind, model, arch, cfg.feature_layer, cfg.select_strategy, mean, std)
    if cfg.name_or_path is not None:
        _check_loaded(tower, info, cfg.name_or_path)
    return tower


def build_hf_clip(cfg: VisionConfig) -> HFVisionTower:
    return build_hf_tower(cfg, "hf_clip")


def build_hf_siglip(cfg: VisionConfig) -> HFVisionTower:
    return build_hf_tower(cfg, "hf_siglip")


def _check_agrees(config: PretrainedConfig, overrides: Dict[str, Any], source: str) -> None:
    # a preset carries both a hub id and its architecture: a silent disagreement would load weights into
    # a different shape or run a different activation than the config says
    loaded = config.to_dict()
    for key, want in overrides.items():
        if key not in loaded:
            raise ValueError(f"vision.config.{key}: {type(config).__name__} from {source} has no field {key!r}")
        if _jsonable(loaded[key]) != _jsonable(want):
            raise ValueError(f"vision.config.{key}={want!r} but {source} has {key}={loaded[key]!r}; "
                             f"fix the config or drop the key")


def _check_loaded(tower: HFVisionTower, info: Dict[str, Any], source: str) -> None:
    # weights that were dropped by truncation may be absent (e.g. a tower saved without SigLIP's head);
    # anything we keep must have come from the checkpoint, never from random init
    kept = set(tower.model.state_dict())
    missing = sorted(set(info.get("missing_keys", ())) & kept)
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise ValueError(f"vision.name_or_path {source}: weights missing for {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}; shape mismatches: {mismatched[:8]}")


def _preprocessor_norm(name_or_path: str) -> Optional[Tuple[list, list]]:
    """(image_mean, image_std) from the checkpoint's preprocessor_config.json, when it has one."""
    path = cached_file(name_or_path, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False)
    if not path:
        return None
    with open(path) as f:
        data = json.load(f)
    mean, std = data.get("image_mean"), data.get("image_std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        return mean, std
    return None


def _pick_norm(explicit: Dict[str, Any], loaded, default_mean, default_std):
    mean, std = loaded if loaded is not None else (default_mean, default_std)
    mean = explicit.get("image_mean", mean)
    std = explicit.get("image_std", std)
    for name, v in (("image_mean", mean), ("image_std", std)):
        if not (isinstance(v, (list, tuple)) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            raise ValueError(f"vision.config.{name} must be 3 numbers (RGB, 0-1 scale), got {v!r}")
    return mean, std


__all__: List[str] = ["HFVisionTower", "build_hf_tower", "build_hf_clip", "build_hf_siglip", "arch_dict",
                      "OPENAI_CLIP_MEAN", "OPENAI_CLIP_STD", "SIGLIP_MEAN", "SIGLIP_STD"]

"""Our vision tower -> a transformers vision model (config + weights in the 4.x layout), by tower kind.

    conv = export_vision_tower(model.vision_tower, model.config.vision.kind)   # ConvertedTower
    # raises NotConvertible(reason) when transformers has no model computing the same features

"hf_clip" / "hf_siglip" towers are transformers models already: their weights are renamed to the 4.x
layout (``vision_model.*``). "open_clip" towers go through ``open_clip_convert``. Our towers keep only the
blocks up to the deepest selected feature layer, so the exported vision config has exactly that many
layers; the final norm (never on the feature path) is written as an identity LayerNorm and SigLIP's pooling
head is switched off (``vision_use_head: false``), so the HF model loads with no missing weights.
"""
from __future__ import annotations

from typing import Callable, Dict

from mllm.registry import Registry
from .open_clip_convert import ConvertedTower, NotConvertible, convert_open_clip_tower, identity_layernorm

TOWER_EXPORTERS: Registry[Callable[..., ConvertedTower]] = Registry("vision tower exporter")

_HF_MODEL_TYPES = {"hf_clip": "clip_vision_model", "hf_siglip": "siglip_vision_model"}


def _export_hf_tower(tower) -> ConvertedTower:
    model = tower.model
    kept = len(model.encoder.layers)
    arch = {k: v for k, v in tower.arch_config().items() if k not in ("image_mean", "image_std")}
    config: Dict = dict(model_type=type(model.config).model_type, **arch)
    config["num_hidden_layers"] = kept
    if config["model_type"] == "siglip_vision_model":
        config["vision_use_head"] = False
    state = {f"vision_model.{k}": v.detach() for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    state.update(identity_layernorm("vision_model.post_layernorm", model.config.hidden_size))
    return ConvertedTower(config, state, list(tower.feature_layers), kept)


TOWER_EXPORTERS.add("hf_clip", _export_hf_tower)
TOWER_EXPORTERS.add("hf_siglip", _export_hf_tower)
TOWER_EXPORTERS.add("open_clip", convert_open_clip_tower)


def export_vision_tower(tower, kind: str) -> ConvertedTower:
    """Convert ``tower`` (built for ``vision.kind`` = ``kind``); NotConvertible when impossible."""
    if kind not in TOWER_EXPORTERS:
        raise NotConvertible(f"vision tower kind {kind!r} has no transformers export (known: "
                             f"{', '.join(TOWER_EXPORTERS.keys())})")
    return TOWER_EXPORTERS.get(kind)(tower)


def relative_feature_layers(conv: ConvertedTower):
    """HF ``vision_feature_layer`` for the converted tower: negative indices (``-1`` = its last layer), an int
    for one layer and a list for several (concatenated on channels in this order)."""
    n = conv.num_layers + 1  # hidden states: embeddings + one per layer
    layers = [k - n for k in conv.feature_layers]
    return layers[0] if len(layers) == 1 else layers


__all__ = ["TOWER_EXPORTERS", "export_vision_tower", "relative_feature_layers", "NotConvertible", "ConvertedTower"]

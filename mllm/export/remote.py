"""Models without a native transformers class -> transformers checkpoints with their own modeling code.

    from mllm.export.remote import export_remote
    export_remote(model, "out/", conv=conv_or_None)     # conv: an HF-converted tower, or None for open_clip

Q-Former connectors, towers with no exact transformers counterpart (through open_clip) and, later, extra
heads take this path. The directory holds ``configuration_mllm.py``, ``modeling_mllm.py``,
``processing_mllm.py`` (+ ``anyres_mllm.py``, ``vision_open_clip.py``) copied from ``remote_code/``, and
``auto_map`` entries for AutoConfig, AutoModelForImageTextToText, AutoModelForCausalLM and AutoProcessor, so
it loads with ``trust_remote_code=True`` (and only then) in transformers 4.57 and 5.x::

    AutoModelForImageTextToText.from_pretrained(out, trust_remote_code=True)

The model is assembled from transformers parts only: an ``AutoModel`` vision tower from the vision config
(4.x key layout, like the native path), our connector under the same parameter names (``connector.*``:
``linear_{1,2}`` or ``query_tokens`` / ``qformer`` (``Blip2QFormerModel``) / ``projection``), ``image_newline``,
and an ``AutoModelForCausalLM`` (``language_model.*``, lm_head always written so tying never matters).

Extending it: a new part (e.g. a DiT head) adds its module to ``modeling_mllm.py`` behind a config key,
its weights to ``remote_state_dict`` and its settings to ``remote_config`` (``extra_heads``).
"""
from __future__ import annotations

import os
import shutil
from typing import Any, Dict, Optional

import torch

from ..vision.hf import arch_dict
from .common import (Log, dtype_name, hf_text_config, write_generation_config, write_json, write_tokenizer,
                     write_weights)
from .llava import image_processor_config
from .towers import ConvertedTower

REMOTE_CODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "remote_code")
REMOTE_FILES = ("configuration_mllm.py", "modeling_mllm.py", "processing_mllm.py", "anyres_mllm.py",
                "vision_open_clip.py")
MODEL_CLASS = "modeling_mllm.MllmForConditionalGeneration"
AUTO_MAP = {
    "AutoConfig": "configuration_mllm.MllmConfig",
    "AutoModelForImageTextToText": MODEL_CLASS,
    "AutoModelForCausalLM": MODEL_CLASS,
    "AutoProcessor": "processing_mllm.MllmProcessor",
}
REMOTE_CONNECTORS = ("mlp2x_gelu", "qformer")


def remote_config(model, conv: Optional[ConvertedTower]) -> Dict[str, Any]:
    cfg = model.config
    geo = model.geometry
    if cfg.connector.kind not in REMOTE_CONNECTORS:
        raise ValueError(f"connector {cfg.connector.kind!r} has no exported modeling code (known: "
                         f"{', '.join(REMOTE_CONNECTORS)})")
    if cfg.gen_head:
        raise ValueError("models with an image-generation head cannot be exported yet")
    text = hf_text_config(model.llm.config)
    out: Dict[str, Any] = {
        "architectures": ["MllmForConditionalGeneration"],
        "model_type": "mllm",
        "auto_map": dict(AUTO_MAP),
        "connector": cfg.connector.kind,
        "text_config": text,
        # hidden-state indices (0 = embeddings), valid for the exported tower
        "vision_feature_layer": list(conv.feature_layers if conv else model.vision_tower.feature_layers),
        "vision_feature_select_strategy": geo.select_strategy,
        "image_token_index": int(model.image_token_id),
        "image_token": cfg.image_token,
        "image_grid_pinpoints": geo.pinpoints,
        "tile_size": geo.tile_size,
        "patch_size": geo.patch_size,
        "has_cls": geo.has_cls,
        "use_image_newline": bool(geo.image_newline),
        "tie_word_embeddings": bool(text.get("tie_word_embeddings", False)),
        "torch_dtype": dtype_name(model.llm.get_input_embeddings().weight.dtype),
        "extra_heads": {},
    }
    if conv is not None:
        out.update(vision_backend="hf", vision_config=dict(conv.vision_config))
    else:
        arch = {k: v for k, v in model.vision_tower.arch_config().items() if k not in ("image_mean", "image_std")}
        out.update(vision_backend="open_clip", vision_config=arch)
    if cfg.connector.kind == "qformer":
        qcfg = arch_dict(model.connector.qformer_config)
        qcfg.pop("encoder_hidden_size", None)  # set from the tower's width when built
        out.update(qformer_config=qcfg, num_query_tokens=model.connector.num_queries)
    return out


def remote_state_dict(model, conv: Optional[ConvertedTower]) -> Dict[str, torch.Tensor]:
    state: Dict[str, torch.Tensor] = {}
    if conv is not None:
        state.update({f"vision_tower.{k}": v for k, v in conv.state_dict.items()})
    else:  # the exported OpenClipTower keeps mllm's module path (vision_tower.visual.*)
        state.update({f"vision_tower.{k}": v for k, v in model.vision_tower.state_dict().items()})
    state.update({f"connector.{k}": v for k, v in model.connector.state_dict().items()})
    if model.geometry.image_newline:
        state["image_newline"] = model.image_newline.detach()
    state.update({f"language_model.{k}": v for k, v in model.llm.state_dict().items()})
    return state


def processor_files(model) -> Dict[str, Dict[str, Any]]:
    geo = model.geometry
    pre = image_processor_config(model)
    pre.pop("processor_class", None)
    pre["auto_map"] = {"AutoProcessor": AUTO_MAP["AutoProcessor"]}
    proc = {
        "processor_class": "MllmProcessor",
        "auto_map": {"AutoProcessor": AUTO_MAP["AutoProcessor"]},
        "image_token": model.config.image_token,
        "tile_size": geo.tile_size,
        "patch_size": geo.patch_size,
        "image_grid_pinpoints": geo.pinpoints,
        "has_cls": geo.has_cls,
        "vision_feature_select_strategy": geo.select_strategy,
        "use_image_newline": bool(geo.image_newline),
        "num_query_tokens": geo.queries_per_tile,
    }
    return {"preprocessor_config.json": pre, "processor_config.json": proc}


def export_remote(model, out_dir: str, conv: Optional[ConvertedTower] = None, *, chat_template: Optional[str] = None,
                  dtype: Optional[torch.dtype] = None, max_shard_size="5GB",
                  log: Optional[Log] = None) -> Dict[str, Any]:
    """Write ``model`` (LoRA already merged) as a trust_remote_code checkpoint; returns config.json."""
    os.makedirs(out_dir, exist_ok=True)
    # one precision for the whole checkpoint (transformers loads it with one dtype): the LLM's by default
    dtype = dtype or model.llm.get_input_embeddings().weight.dtype
    cfg = remote_config(model, conv)
    cfg["torch_dtype"] = dtype_name(dtype)
    state = remote_state_dict(model, conv)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    for name in REMOTE_FILES:
        shutil.copyfile(os.path.join(REMOTE_CODE_DIR, name), os.path.join(out_dir, name))
    write_json(cfg, os.path.join(out_dir, "config.json"))
    write_weights(state, out_dir, max_shard_size=max_shard_size)
    for name, data in processor_files(model).items():
        write_json(data, os.path.join(out_dir, name))
    write_tokenizer(model.tokenizer, out_dir, image_token=model.config.image_token, chat_template=chat_template)
    write_generation_config(model.tokenizer, out_dir, cfg["text_config"])
    if log:
        log(f"wrote MllmForConditionalGeneration (remote code, {cfg['vision_backend']} tower, "
            f"{cfg['connector']} connector, {len(state)} tensors) to {out_dir}")
    return cfg

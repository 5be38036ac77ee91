"""MLP-connector models -> native transformers Llava / LlavaNext checkpoints (portable: 4.57 and 5.x).

    from mllm.app.export.llava import export_llava, native_blocker
    reason = native_blocker(model)            # None when the model maps onto Llava(Next) exactly
    export_llava(model, conv, "out/")         # conv = mllm.app.export.towers.export_vision_tower(...)

AnyRes on -> ``LlavaNextForConditionalGeneration``, off -> ``LlavaForConditionalGeneration``. What is
written, in the layout both transformers 4.57 and 5.x load (5.x on its own writes the tower without its
``vision_model.`` level and RoPE only in ``rope_parameters``; 4.57 would then silently re-initialise the
tower and lose ``rope_theta``):
  config.json               4.x-compatible: vision_feature_layer (int or list, relative to the exported
                            tower), vision_feature_select_strategy ("default" drops CLS; "full" for SigLIP),
                            image_grid_pinpoints (h, w), image_token_index, projector_hidden_act "gelu",
                            multimodal_projector_bias, tie_word_embeddings (top level and text_config),
                            text_config with ``rope_theta`` beside 5.x's ``rope_parameters``, image_seq_length
  model.safetensors         4.x keys: language_model.model.*, language_model.lm_head.weight (untied only),
                            vision_tower.vision_model.*, multi_modal_projector.linear_{1,2}.*, image_newline
  preprocessor_config.json  LlavaNextImageProcessor (AnyRes) / CLIPImageProcessor (fixed): shortest_edge =
                            crop = tile, pinpoints, our mean/std -> the same pixels as AnyResImageProcessor
  processor_config.json     patch_size, num_additional_image_tokens (1 with a CLS token, else 0),
                            vision_feature_select_strategy, image_token
  tokenizer files, chat_template.jinja, generation_config.json (see ``mllm.app.export.common``)
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence

import torch

from .common import (Log, dtype_name, hf_text_config, write_generation_config, write_json, write_tokenizer,
                     write_weights)
from .towers import ConvertedTower, relative_feature_layers

NATIVE_CONNECTORS = ("mlp2x_gelu",)


def native_blocker(model) -> Optional[str]:
    """Why ``model`` cannot become a native Llava(Next) checkpoint (None when it can), tower aside."""
    cfg = model.config
    if cfg.connector.kind not in NATIVE_CONNECTORS:
        return (f"connector {cfg.connector.kind!r} has no native transformers class (Llava takes the "
                f"{'/'.join(NATIVE_CONNECTORS)} projector only)")
    if getattr(model, "gen_head", None) is not None or cfg.gen_head:
        return "the model has an image-generation head"
    if model.geometry.grid_pinpoints and not model.geometry.image_newline:
        return "AnyRes without image_newline: LlavaNext always appends the newline embedding"
    return None


def llava_config(model, conv: ConvertedTower) -> Dict[str, Any]:
    """config.json of the native checkpoint (a plain dict in the 4.x-compatible form)."""
    geo = model.geometry
    text = hf_text_config(model.llm.config)
    tie = bool(text.get("tie_word_embeddings", False))
    anyres = bool(geo.grid_pinpoints)
    dtype = dtype_name(model.llm.get_input_embeddings().weight.dtype)
    cfg: Dict[str, Any] = {
        "architectures": ["LlavaNextForConditionalGeneration" if anyres else "LlavaForConditionalGeneration"],
        "model_type": "llava_next" if anyres else "llava",
        "image_token_index": int(model.image_token_id),
        "projector_hidden_act": "gelu",  # our MLP's nn.GELU() is exact GELU = ACT2FN["gelu"]
        "multimodal_projector_bias": True,
        "vision_feature_layer": relative_feature_layers(conv),
        "vision_feature_select_strategy": geo.select_strategy,
        # tokens one fixed-resolution image becomes (LlavaNext uses it for nothing but keeps the field)
        "image_seq_length": int(geo.num_image_tokens((geo.tile_size, geo.tile_size))) if not anyres
        else (geo.tile_size // geo.patch_size) ** 2,
        "tie_word_embeddings": tie,
        "text_config": text,
        "vision_config": dict(conv.vision_config),
        "torch_dtype": dtype,  # 4.x name; 5.x reads it too
    }
    if anyres:
        cfg["image_grid_pinpoints"] = geo.pinpoints
    return cfg


def llava_state_dict(model, conv: ConvertedTower, tie: bool) -> Dict[str, torch.Tensor]:
    """Our weights under the 4.x Llava keys."""
    state: Dict[str, torch.Tensor] = {}
    for k, v in conv.state_dict.items():
        state[f"vision_tower.{k}"] = v
    for k, v in model.connector.state_dict().items():
        state[f"multi_modal_projector.{k}"] = v
    if model.image_newline is not None and model.geometry.grid_pinpoints:
        state["image_newline"] = model.image_newline.detach()
    out_emb = model.llm.get_output_embeddings()
    head_names = {n for n, p in model.llm.named_parameters(remove_duplicate=False)
                  if out_emb is not None and p is out_emb.weight}
    if out_emb is None or "lm_head.weight" not in head_names:
        # transformers 5.x Llava keeps the head as ``lm_head`` whatever the LLM calls it; 4.57 uses the LLM's name
        raise ValueError(f"the LLM's output embedding is {sorted(head_names) or 'missing'}, not 'lm_head.weight': "
                         f"no portable Llava layout for {type(model.llm).__name__}")
    emb = model.llm.get_input_embeddings().weight
    for k, v in model.llm.state_dict().items():
        if k == "lm_head.weight":
            continue  # written below when untied; tied, it comes from the input embeddings
        state[f"language_model.{k}"] = v
    if not tie:
        state["language_model.lm_head.weight"] = out_emb.weight.detach()
    elif out_emb.weight.data_ptr() != emb.data_ptr():
        raise ValueError("tie_word_embeddings is true but the LLM's lm_head and input embeddings differ")
    return state


def image_processor_config(model) -> Dict[str, Any]:
    """preprocessor_config.json that makes transformers compute AnyResImageProcessor's pixels."""
    geo = model.geometry
    s = geo.tile_size
    mean, std = list(model.config.image.mean), list(model.config.image.std)
    cfg: Dict[str, Any] = {
        "do_resize": True, "size": {"shortest_edge": s}, "resample": 3,  # PIL bicubic
        "do_center_crop": True, "crop_size": {"height": s, "width": s},
        "do_rescale": True, "rescale_factor": 1 / 255,
        "do_normalize": True, "image_mean": mean, "image_std": std, "do_convert_rgb": True,
    }
    if geo.grid_pinpoints:
        cfg.update(image_processor_type="LlavaNextImageProcessor", do_pad=True,
                   image_grid_pinpoints=geo.pinpoints, processor_class="LlavaNextProcessor")
    else:
        cfg.update(image_processor_type="CLIPImageProcessor", processor_class="LlavaProcessor")
    return cfg


def processor_config(model) -> Dict[str, Any]:
    geo = model.geometry
    return {
        "processor_class": "LlavaNextProcessor" if geo.grid_pinpoints else "LlavaProcessor",
        "patch_size": geo.patch_size,
        # the processor computes grid**2 + this, minus 1 for "default": our count either way
        "num_additional_image_tokens": 1 if geo.has_cls else 0,
        "vision_feature_select_strategy": geo.select_strategy,
        "image_token": model.config.image_token,
    }


def export_llava(model, conv: ConvertedTower, out_dir: str, *, chat_template: Optional[str] = None,
                 dtype: Optional[torch.dtype] = None, max_shard_size="5GB", stop_ids: Sequence[int] = (),
                 log: Optional[Log] = None) -> Dict[str, Any]:
    """Write the native checkpoint of ``model`` (LoRA already merged) into ``out_dir``; returns config.json."""
    reason = native_blocker(model)
    if reason:
        raise ValueError(f"cannot export natively: {reason}")
    os.makedirs(out_dir, exist_ok=True)
    # one precision for the whole checkpoint (transformers loads it with one dtype): the LLM's by default
    dtype = dtype or model.llm.get_input_embeddings().weight.dtype
    cfg = llava_config(model, conv)
    cfg["torch_dtype"] = dtype_name(dtype)
    state = llava_state_dict(model, conv, cfg["tie_word_embeddings"])
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    write_json(cfg, os.path.join(out_dir, "config.json"))
    write_weights(state, out_dir, max_shard_size=max_shard_size)
    write_json(image_processor_config(model), os.path.join(out_dir, "preprocessor_config.json"))
    write_json(processor_config(model), os.path.join(out_dir, "processor_config.json"))
    write_tokenizer(model.tokenizer, out_dir, image_token=model.config.image_token, chat_template=chat_template)
    write_generation_config(model.tokenizer, out_dir, cfg["text_config"], stop_ids)
    if log:
        log(f"wrote {cfg['architectures'][0]} ({len(state)} tensors) to {out_dir}")
    return cfg


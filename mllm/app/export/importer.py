"""llava-hf checkpoints -> mllm checkpoints, to continue training a published model.

    model = import_llava("llava-hf-dir/", "ckpt/")       # returns the MultimodalLM it saved
    mllm import --from llava-hf-dir/ --out ckpt/ [--chat-template vicuna_v1]

Reads a native ``LlavaForConditionalGeneration`` / ``LlavaNextForConditionalGeneration`` directory in either
key layout (4.x: ``language_model.model.*``, ``vision_tower.vision_model.*``; 5.x: ``model.language_model.*``,
``model.vision_tower.*``, ``lm_head.weight``) with a CLIP or SigLIP vision tower, safetensors only. The
mllm config is derived from ``config.json`` (tower, feature layer(s), select strategy, pinpoints, LLM) and
``preprocessor_config.json`` (tile size, mean/std); the tokenizer is copied. Weights load strictly: only the
tower parts mllm never computes (blocks after the deepest feature layer, the final norm, SigLIP's pooling
head) may be left behind. Exporting the imported model gives back a checkpoint with the same logits.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Optional, Tuple

import torch

from data_pipelines.processor import MultimodalProcessor
from data_pipelines.templates import TEMPLATES, get_template
from mllm.checkpoint import load_state_dict_files, load_weights
from mllm.config import AnyResConfig, ConnectorConfig, ImageConfig, LLMConfig, ModelConfig, VisionConfig
from mllm.constants import IMAGE_TOKEN
from mllm.model import MultimodalLM
from mllm.vision.hf import arch_dict

from .common import CHAT_TEMPLATE_FILE, Log, hf_text_config

VISION_KINDS = {"clip_vision_model": "hf_clip", "siglip_vision_model": "hf_siglip"}
MODEL_TYPES = ("llava", "llava_next")
DEFAULT_TEMPLATE = "vicuna_v1"


def _read_json(path: str, what: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing ({what})")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None


def read_hf_weights(src: str) -> Dict[str, torch.Tensor]:
    if not any(f.endswith(".safetensors") for f in os.listdir(src)):
        bins = [f for f in os.listdir(src) if f.endswith((".bin", ".pt", ".pth"))]
        raise ValueError(f"{src}: no safetensors weights{f' (found {bins})' if bins else ''}; only safetensors "
                         f"are read (nothing is unpickled) - convert with transformers' save_pretrained first")
    return load_state_dict_files(src)


# ---- keys ------------------------------------------------------------------------------------------------------
_RULES = [  # (pattern, replacement) applied first match wins; 5.x layout, then 4.x
    (r"^model\.language_model\.", "llm.model."),
    (r"^lm_head\.", "llm.lm_head."),
    (r"^model\.vision_tower\.(vision_model\.)?", "vision_tower.model."),
    (r"^model\.multi_modal_projector\.", "connector."),
    (r"^model\.image_newline$", "image_newline"),
    (r"^language_model\.model\.", "llm.model."),
    (r"^language_model\.lm_head\.", "llm.lm_head."),
    (r"^vision_tower\.(vision_model\.)?", "vision_tower.model."),
    (r"^multi_modal_projector\.", "connector."),
    (r"^image_newline$", "image_newline"),
]


def our_key(key: str, source: str = "checkpoint") -> str:
    for pattern, repl in _RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise ValueError(f"{source}: weight {key!r} is not part of a Llava / LlavaNext model")


# parts of the HF tower our truncated tower never computes
_PRUNED = re.compile(r"^vision_tower\.model\.(post_layernorm\.|head\.|encoder\.layers\.(\d+)\.)")


def map_state_dict(state: Dict[str, torch.Tensor], kept_layers: int, source: str) -> Dict[str, torch.Tensor]:
    out: Dict[str, torch.Tensor] = {}
    for k, v in state.items():
        ours = our_key(k, source)
        m = _PRUNED.match(ours)
        if m and (m.group(2) is None or int(m.group(2)) >= kept_layers):
            continue
        out[ours] = v
    return out


# ---- config ------------------------------------------------------------------------------------------------------
def mllm_config_from_hf(src: str, chat_template: Optional[str] = None,
                        log: Optional[Log] = None) -> Tuple[ModelConfig, Any]:
    """(our ModelConfig, the transformers config) for the llava-hf checkpoint in ``src``."""
    from transformers import AutoConfig

    cfg_path = os.path.join(src, "config.json")
    raw = _read_json(cfg_path, "the model config")
    mtype = raw.get("model_type")
    if mtype not in MODEL_TYPES:
        raise ValueError(f"{cfg_path}: model_type {mtype!r} is not a native Llava checkpoint "
                         f"(known: {', '.join(MODEL_TYPES)})")
    hf = AutoConfig.from_pretrained(src)  # normalises 4.x and 5.x configs alike
    vtype = hf.vision_config.model_type
    if vtype not in VISION_KINDS:
        raise ValueError(f"{cfg_path}: vision_config.model_type {vtype!r} is not supported "
                         f"(known: {', '.join(VISION_KINDS)})")
    if hf.projector_hidden_act != "gelu" or not getattr(hf, "multimodal_projector_bias", True):
        raise ValueError(f"{cfg_path}: projector_hidden_act={hf.projector_hidden_act!r}, multimodal_projector_bias="
                         f"{getattr(hf, 'multimodal_projector_bias', True)}; mllm's MLP connector is GELU with biases")
    pre = _image_processor_config(src)
    tile = int(hf.vision_config.image_size)
    size = pre.get("size") or {}
    short = size.get("shortest_edge", size.get("height"))
    crop = (pre.get("crop_size") or {}).get("height", tile) if pre.get("do_center_crop", True) else tile
    if (short is not None and int(short) != tile) or int(crop) != tile:
        raise ValueError(f"{src}: the image processor's size={size} / crop_size={pre.get('crop_size')} but the "
                         f"tower takes {tile}px tiles; mllm's image processor resizes to the tile size")
    anyres = mtype == "llava_next"
    pins = [list(p) for p in (hf.image_grid_pinpoints or pre.get("image_grid_pinpoints") or [])] if anyres else []
    text = hf_text_config(hf.text_config)
    proc = _read_optional_json(os.path.join(src, "processor_config.json"))
    image_token = proc.get("image_token", IMAGE_TOKEN)
    dtype = raw.get("torch_dtype") or raw.get("dtype")
    for key in ("image_mean", "image_std"):
        if not (isinstance(pre.get(key), list) and len(pre[key]) == 3):
            raise ValueError(f"{src}: the image processor config has no 3-value {key} (got {pre.get(key)!r})")
    vision = dict(arch_dict(hf.vision_config), image_mean=list(pre["image_mean"]), image_std=list(pre["image_std"]))
    template = chat_template or _match_template(src, log)
    cfg = ModelConfig(
        name=os.path.basename(os.path.normpath(src)),
        vision=VisionConfig(kind=VISION_KINDS[vtype], config=vision, feature_layer=hf.vision_feature_layer,
                            select_strategy=hf.vision_feature_select_strategy),
        connector=ConnectorConfig(kind="mlp2x_gelu"),
        llm=LLMConfig(config=text, dtype=dtype if dtype in ("float32", "bfloat16", "float16") else None),
        anyres=AnyResConfig(enabled=anyres, grid_pinpoints=pins, image_newline=anyres),
        image=ImageConfig(size=tile, mean=tuple(pre["image_mean"]), std=tuple(pre["image_std"])),
        chat_template=template,
        image_token=image_token,
    )
    return cfg, hf


def _image_processor_config(src: str) -> Dict[str, Any]:
    """preprocessor_config.json (4.x and hub checkpoints), else the ``image_processor`` entry that 5.x nests
    in processor_config.json."""
    path = os.path.join(src, "preprocessor_config.json")
    if os.path.isfile(path):
        return _read_json(path, "the image processor config")
    nested = _read_optional_json(os.path.join(src, "processor_config.json")).get("image_processor")
    if not isinstance(nested, dict):
        raise FileNotFoundError(f"{src}: no preprocessor_config.json and no image_processor in processor_config.json")
    return nested


def _read_optional_json(path: str) -> Dict[str, Any]:
    return _read_json(path, "") if os.path.isfile(path) else {}


def _match_template(src: str, log: Optional[Log]) -> str:
    """Our template whose Jinja equals the checkpoint's chat template, else the default (said in the log)."""
    jinja = None
    path = os.path.join(src, CHAT_TEMPLATE_FILE)
    if os.path.isfile(path):
        with open(path) as f:
            jinja = f.read()
    else:
        jinja = _read_optional_json(os.path.join(src, "tokenizer_config.json")).get("chat_template")
    if jinja:
        for name in TEMPLATES.keys():
            if get_template(name).jinja() == jinja:
                return name
    if log:
        log(f"chat template: none of ours matches {src}'s; using {DEFAULT_TEMPLATE!r} (override with --chat-template)")
    return DEFAULT_TEMPLATE


# ---- import ------------------------------------------------------------------------------------------------------
def import_llava(src: str, out_dir: Optional[str] = None, *, chat_template: Optional[str] = None,
                 overwrite: bool = False, log: Optional[Log] = None):
    """Build the MultimodalLM of a llava-hf checkpoint; save it to ``out_dir`` when given; return it."""
    from transformers import AutoTokenizer

    if not os.path.isdir(src):
        raise FileNotFoundError(f"--from {src!r} is not a directory")
    if out_dir and os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ValueError(f"--out {out_dir!r} is not empty; choose a new directory or pass --overwrite")
    cfg, hf = mllm_config_from_hf(src, chat_template, log)
    tokenizer = AutoTokenizer.from_pretrained(src)
    tok_id = tokenizer.convert_tokens_to_ids(cfg.image_token)
    if tok_id != hf.image_token_index:
        raise ValueError(f"{src}: the tokenizer maps {cfg.image_token!r} to {tok_id} but config.json's "
                         f"image_token_index is {hf.image_token_index}")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token if tokenizer.eos_token is not None else tokenizer.unk_token
    model = MultimodalLM.build(cfg, tokenizer=tokenizer)
    state = map_state_dict(read_hf_weights(src), len(model.vision_tower.model.encoder.layers), src)
    try:
        load_weights(model, state, source=src)
    except RuntimeError as e:  # shape mismatches from load_state_dict
        raise ValueError(f"{src}: weights do not fit the model its config describes: {e}") from None
    if hasattr(model.llm, "tie_weights"):
        model.llm.tie_weights()
    model.eval()
    if out_dir:
        model.save_pretrained(out_dir)
        MultimodalProcessor.for_model(model).save_pretrained(out_dir)
        if log:
            log(f"imported {type(hf).__name__.replace('Config', '')} from {src} -> {out_dir} "
                f"({cfg.vision.kind} tower, feature layer {cfg.vision.feature_layer}, "
                f"AnyRes {'on' if cfg.anyres.enabled else 'off'})")
    return model

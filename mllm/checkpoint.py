"""Checkpoint directories: ``mllm_config.json`` + ``config.json`` + safetensors weights + tokenizer files.

    save_pretrained(model, "ckpt", max_shard_size="2GB")
    load_weights(model, load_state_dict_files("ckpt"))   # strict: missing or unexpected keys are errors
    model = mllm.model.load_pretrained("ckpt")           # the whole model (MultimodalLM.from_pretrained)

The saved config is self-contained: the tower's and the LLM's architectures are written out, so a
checkpoint reloads offline without any hub id. Weights are safetensors only; nothing is unpickled.
Tied parameters (e.g. ``lm_head.weight`` = ``embed_tokens.weight``) are stored once.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .config import CONFIG_NAME, ModelConfig

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
HF_CONFIG_NAME = "config.json"
ADAPTER_DIR = "llm_adapter"  # a peft LoRA adapter kept beside the base weights (not merged)


def is_peft(module) -> bool:
    return hasattr(module, "peft_config") and hasattr(module, "get_base_model")


def merge_lora_if_any(model):
    """Merge a LoRA-wrapped LLM into plain weights (in place); returns the model."""
    if is_peft(model.llm):
        model.llm = model.llm.merge_and_unload()
    return model


def _base_key(key: str) -> str:
    """peft-wrapped key -> the plain model's key (``llm.base_model.model.x.base_layer.w`` -> ``llm.x.w``)."""
    return key.replace("llm.base_model.model.", "llm.", 1).replace(".base_layer.", ".")


def portable_config(model) -> ModelConfig:
    """The model's config with every part described by architecture (no hub ids, no remote loads)."""
    cfg = model.config.copy()
    cfg.vision.name_or_path = None
    cfg.vision.config = model.vision_tower.arch_config()
    cfg.llm.name_or_path = None
    llm = model.llm.get_base_model() if is_peft(model.llm) else model.llm
    llm_cfg = llm.config.to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "torch_dtype", "dtype"):
        llm_cfg.pop(key, None)
    cfg.llm.config = llm_cfg
    cfg.llm.tokenizer = None  # saved beside the weights
    cfg.llm.dtype = _dtype_name(model.llm.get_input_embeddings().weight.dtype)
    return cfg


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _unique_state_dict(module: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return unique_state_dict(module.state_dict())


def unique_state_dict(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A state dict with shared storages kept once (first name wins) — safetensors refuses aliases."""
    seen: Dict[tuple, str] = {}
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            continue
        seen[key] = name
        out[name] = tensor.detach().contiguous().cpu()
    return out


def _parse_size(size) -> int:
    if isinstance(size, int):
        return size
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    s = str(size).upper().strip()
    for u, m in sorted(units.items(), key=lambda kv: -len(kv[0])):
        if s.endswith(u):
            return int(float(s[: -len(u)]) * m)
    return int(s)


def save_state_dict(state: Dict[str, torch.Tensor], path: str, max_shard_size="5GB") -> List[str]:
    """Write ``state`` as one or more safetensors files in ``path``; returns the file names."""
    limit = _parse_size(max_shard_size)
    shards: List[Dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    for old in os.listdir(path):
        if old.startswith("model") and (old.endswith(".safetensors") or old == INDEX_NAME):
            os.remove(os.path.join(path, old))
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, WEIGHTS_NAME), metadata={"format": "pt"})
        return [WEIGHTS_NAME]
    names, weight_map = [], {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(path, fname), metadata={"format": "pt"})
        names.append(fname)
        weight_map.update({k: fname for k in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    with open(os.path.join(path, INDEX_NAME), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return names


def load_state_dict_files(path: str) -> Dict[str, torch.Tensor]:
    index = os.path.join(path, INDEX_NAME)
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(path, WEIGHTS_NAME)):
        files = [WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"{path}: no {WEIGHTS_NAME} or {INDEX_NAME} (only safetensors checkpoints are read)")
    state: Dict[str, torch.Tensor] = {}
    for fname in files:
        with safe_open(os.path.join(path, fname), framework="pt") as f:
            for k in f.keys():
                state[k] = f.get_tensor(k)
    return state


def save_pretrained(model, path: str, max_shard_size="5GB") -> None:
    os.makedirs(path, exist_ok=True)
    cfg = portable_config(model)
    cfg.save(os.path.join(path, CONFIG_NAME))
    hf_cfg = {
        "architectures": ["MultimodalLM"],
        "model_type": "mllm",
        "mllm_config": CONFIG_NAME,
        "image_token": cfg.image_token,
        "image_token_index": model.image_token_id,
        "geometry": model.geometry.to_dict(),
        "text_config": cfg.llm.config,
        "vision_config": cfg.vision.config,
    }
    with open(os.path.join(path, HF_CONFIG_NAME), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    state = _unique_state_dict(model)
    if is_peft(model.llm):
        model.llm.save_pretrained(os.path.join(path, ADAPTER_DIR), safe_serialization=True)
        state = {_base_key(k): v for k, v in state.items() if ".lora_" not in k}
    save_state_dict(state, path, max_shard_size=max_shard_size)
    model.tokenizer.save_pretrained(path)


def load_weights(model: torch.nn.Module, state: Dict[str, torch.Tensor], source: str = "checkpoint",
                 allow_missing: Optional[List[str]] = None) -> None:
    """Strict load: every key of ``model`` (modulo tied aliases) must be in ``state`` and vice versa."""
    expected = set(_unique_state_dict(model))
    aliases = set(model.state_dict()) - expected
    got = set(state)
    missing = sorted(expected - got - set(allow_missing or []))
    unexpected = sorted(got - expected - aliases)
    if missing or unexpected:
        raise ValueError(f"{source}: weights do not match the model: missing {len(missing)} key(s) "
                         f"{missing[:10]}, unexpected {len(unexpected)} key(s) {unexpected[:10]}")
    incompatible = model.load_state_dict(state, strict=False)
    # keys reported missing here are tied aliases whose storage was loaded under their first name
    leftover = [k for k in incompatible.missing_keys if k not in aliases and k not in (allow_missing or [])]
    if leftover:
        raise ValueError(f"{source}: weights not loaded: {leftover[:10]}")

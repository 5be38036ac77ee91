"""Decoder LLMs: any transformers causal LM, from a hub id, a local directory, or a config (random init).

    llm, tok = load_llm(LLMConfig(name_or_path="Qwen/Qwen2.5-0.5B"))          # pretrained
    llm, tok = load_llm(LLMConfig(config={"model_type": "llama", ...}, tokenizer="tiny"))

The ``<image>`` token is added to the tokenizer as a real special token and the embeddings are resized
to match, so image positions always carry an id inside the vocabulary.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from .config import LLMConfig
from .constants import IMAGE_TOKEN
from .registry import Registry
from .tokenizer import ensure_image_token, load_tokenizer

LLM_LOADERS: Registry = Registry("LLM loader")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    if name is None:
        return None
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; known: {', '.join(_DTYPES)}")
    return _DTYPES[name]


def hf_config_from_dict(data: dict):
    data = dict(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise ValueError("llm.config needs a 'model_type' (e.g. 'llama', 'qwen2') to build a model without weights")
    return AutoConfig.for_model(model_type, **data)


@LLM_LOADERS.register("hf_causal_lm")
def load_hf_causal_lm(cfg: LLMConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None,
                      image_token: str = IMAGE_TOKEN) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    dtype = resolve_dtype(cfg.dtype)
    if cfg.name_or_path:
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.name_or_path, dtype=dtype,
                                                         trust_remote_code=cfg.trust_remote_code,
                                                         attn_implementation=cfg.attn_implementation)
        except OSError as e:
            raise ValueError(f"cannot load the LLM {cfg.name_or_path!r} (a hub id needs network or a local copy): {e}") from None
    else:
        hf_cfg = hf_config_from_dict(cfg.config)
        model = AutoModelForCausalLM.from_config(hf_cfg, dtype=dtype, trust_remote_code=cfg.trust_remote_code,
                                                 attn_implementation=cfg.attn_implementation)
    if tokenizer is None:
        source = cfg.tokenizer or cfg.name_or_path
        if source is None:
            raise ValueError("llm.tokenizer is required when the LLM is built from a config (use 'tiny' for the built-in one)")
        tokenizer = load_tokenizer(source, trust_remote_code=cfg.trust_remote_code)
    ensure_image_token(tokenizer, image_token)
    n = len(tokenizer)
    if model.get_input_embeddings().num_embeddings < n:
        model.resize_token_embeddings(n)
    return model, tokenizer


def load_llm(cfg: LLMConfig, tokenizer: Optional[PreTrainedTokenizerBase] = None, image_token: str = IMAGE_TOKEN):
    return LLM_LOADERS.get(cfg.kind)(cfg, tokenizer=tokenizer, image_token=image_token)

"""Turn a trained (possibly ZeRO-sharded, LoRA/QLoRA-wrapped) model into a plain checkpoint directory.

The gathered state dict of the trained model is loaded into a fresh full-precision copy of the stage's
input model, wrapped with the same LoRA config when the LLM used LoRA/QLoRA (QLoRA's 4-bit base weights
are frozen, so the fresh copy's full-precision originals are the right base). Every *trained* tensor
must be found in the trained state — a missing one is an error, not a silently random module (LLaVA
lost its projector on LoRA resume this way). Then LoRA is merged, or kept as an adapter beside the
base weights (``merge_lora: false``).
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Dict

import torch

from data_pipelines.processor import MultimodalProcessor
from mllm.modules import MODULES, owns_key

from .freeze import _lora_config
from .specs import TrainConfig

log = logging.getLogger("mllm.train")


def consolidate(cfg: TrainConfig, trained: Dict[str, torch.Tensor], load_start_model: Callable):
    from peft import get_peft_model

    model = load_start_model(cfg)
    lora = cfg.module("llm").mode in ("lora", "qlora")
    if lora:
        model.llm = get_peft_model(model.llm, _lora_config(cfg.lora, task_type="CAUSAL_LM"))
    must = [m for m in MODULES if cfg.module(m).mode == "full"]
    own = model.state_dict()
    new_state, missing = {}, []
    for key, ref in own.items():
        t = trained.get(key)
        is_lora = ".lora_" in key
        needed = is_lora or any(owns_key(m, key) for m in must)
        if t is not None and t.shape == ref.shape:
            new_state[key] = t.to(ref.dtype)
        elif needed:
            missing.append(key)
    if missing:
        raise ValueError(f"consolidation: {len(missing)} trained tensor(s) missing from the trained state "
                         f"(or with another shape): {missing[:8]}")
    model.load_state_dict(new_state, strict=False)
    if lora and cfg.merge_lora:
        model.llm = model.llm.merge_and_unload()
    return model


@contextlib.contextmanager
def _outside_zero3():
    """Build plain (unpartitioned) models on one rank even while a ZeRO-3 Trainer is alive: transformers
    would otherwise construct them under ``deepspeed.zero.Init``, whose collectives wait for every rank."""
    from transformers.integrations import deepspeed as hf_ds

    saved = hf_ds._hf_deepspeed_config_weak_ref
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds._hf_deepspeed_config_weak_ref = saved


def consolidate_and_save(cfg: TrainConfig, trained: Dict[str, torch.Tensor], load_start_model: Callable) -> None:
    with _outside_zero3():
        model = consolidate(cfg, trained, load_start_model)
    model.save_pretrained(cfg.output_dir)
    MultimodalProcessor.for_model(model).save_pretrained(cfg.output_dir)  # eval, chat, export read it
    log.info("consolidated model written to %s%s", cfg.output_dir,
             " (LoRA kept as adapter)" if cfg.module("llm").mode in ("lora", "qlora") and not cfg.merge_lora else "")

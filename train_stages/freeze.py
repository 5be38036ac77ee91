"""Apply a stage's module policy (frozen | full | lora | qlora) and log what trains.

    groups = apply_policy(model, cfg)          # -> {"vision": [...params], "connector": [...], ...}
    print(param_table(model))                  # per-module trainable / frozen counts

LoRA and QLoRA go through peft (QLoRA: the LLM is reloaded 4-bit with bitsandbytes, then
``prepare_model_for_kbit_training``). The image newline travels with the connector.
"""
from __future__ import annotations

import logging
import tempfile
from typing import Dict, List

import torch
from torch import nn

from mllm.modules import MODULES, loose_parameters, module_parts

from .specs import LoraSpec, TrainConfig

log = logging.getLogger("mllm.train")


def module_of(model) -> Dict[str, nn.Module]:
    return module_parts(model)


def _lora_config(spec: LoraSpec, task_type=None):
    from peft import LoraConfig

    return LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.target_modules, task_type=task_type)


def quantize_llm_4bit(model) -> None:
    """Reload ``model.llm`` in 4-bit NF4 (bitsandbytes) from its current weights."""
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    compute = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    qcfg = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute,
                              bnb_4bit_use_double_quant=True, bnb_4bit_quant_storage=compute)
    with tempfile.TemporaryDirectory() as tmp:
        model.llm.save_pretrained(tmp, safe_serialization=True)
        device_map = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
        llm = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=qcfg, dtype=compute,
                                                   device_map=device_map)
    model.llm = prepare_model_for_kbit_training(llm, use_gradient_checkpointing=False)


def apply_policy(model, cfg: TrainConfig) -> Dict[str, List[nn.Parameter]]:
    """Freeze / unfreeze / wrap each module; return the trainable parameters per module."""
    from peft import get_peft_model

    modes = {name: cfg.module(name).mode for name in MODULES}
    for name in MODULES:
        if name != "llm" and modes[name] in ("lora", "qlora"):
            raise ValueError(f"module {name!r}: mode {modes[name]!r} is only supported for the llm; "
                             f"use 'full' or 'frozen' (modules: {modes})")
    if modes["llm"] == "qlora":
        quantize_llm_4bit(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for name, mod in module_of(model).items():
        if modes[name] == "full":
            for p in mod.parameters():
                p.requires_grad_(True)
    if getattr(model, "gen_head", None) is not None:
        # the head's latent space is fixed: a diffusers VAE inside it never trains, whatever the mode
        model.gen_head.autoencoder.requires_grad_(False)
    if modes["llm"] in ("lora", "qlora"):
        model.llm = get_peft_model(model.llm, _lora_config(cfg.lora, task_type="CAUSAL_LM"))
    for name in MODULES:
        for p in loose_parameters(model, name):
            p.requires_grad_(modes[name] == "full")
    groups: Dict[str, List[nn.Parameter]] = {}
    for name, mod in module_of(model).items():
        groups[name] = [p for p in mod.parameters() if p.requires_grad]
        groups[name] += [p for p in loose_parameters(model, name) if p.requires_grad]
    n_trainable = sum(p.numel() for ps in groups.values() for p in ps)
    if n_trainable == 0:
        raise ValueError(f"stage {cfg.stage!r} leaves nothing to train (modules: {modes})")
    return groups


def param_table(model) -> str:
    """A table of trainable / frozen parameters per module (logged at the start of every stage)."""
    rows = []
    seen = set()
    parts = dict(module_of(model))
    for name, mod in parts.items():
        tr = fr = 0
        for p in mod.parameters():
            seen.add(id(p))
            n = p.numel() if not hasattr(p, "quant_state") else p.numel() * 2  # 4-bit packs 2 per byte
            if p.requires_grad:
                tr += n
            else:
                fr += n
        rows.append((name, tr, fr))
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:
        rows.append(("other (image_newline)", sum(p.numel() for p in rest if p.requires_grad),
                     sum(p.numel() for p in rest if not p.requires_grad)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'module':<{width}}  {'trainable':>12}  {'frozen':>12}"]
    for name, tr, fr in rows:
        lines.append(f"{name:<{width}}  {tr:>12,}  {fr:>12,}")
    lines.append(f"{'total':<{width}}  {sum(r[1] for r in rows):>12,}  {sum(r[2] for r in rows):>12,}")
    return "\n".join(lines)


def per_module_param_groups(groups: Dict[str, List[nn.Parameter]], cfg: TrainConfig, weight_decay: float):
    """Optimizer param groups with each module's own learning rate (no decay on biases / norms / 1-D)."""
    out = []
    base = cfg.resolved_lr()
    for name, params in groups.items():
        if not params:
            continue
        lr = cfg.module(name).lr or base
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        if decay:
            out.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": f"{name}"})
        if no_decay:
            out.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name}.no_decay"})
    return out

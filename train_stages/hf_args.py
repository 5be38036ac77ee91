"""transformers.TrainingArguments from a TrainConfig: our fields stay ours, every other field the Trainer
knows passes through.

A training YAML may name any ``TrainingArguments`` field (``optim: adamw_torch_fused``, ``tf32: true``,
``run_name``, ``eval_strategy``, ``dataloader_pin_memory``, ``torch_compile``, ``gradient_checkpointing_kwargs``
...) at its top level or under ``training_args:``; each is converted to the type transformers declares for it.
``torch_compile`` (and ``torch_compile_backend`` / ``torch_compile_mode``) is the exception in effect: the
runner compiles the model's transformer blocks itself (``mllm.compiling``) and the Trainer gets it off.
A name neither we nor transformers know is an error that lists the close matches::

    split_training_args({"optim": "adamw_torch", "learnig_rate": 1e-4}, ours)
    # ValueError: unknown config field 'learnig_rate'; did you mean learning_rate?
"""
from __future__ import annotations

import dataclasses
import functools
import os
import typing
from typing import Any, Dict, Optional, Set

import torch

from mllm import typed

# set by the runner from our own fields (or required for our data path); a pass-through value would break it
RESERVED = {"output_dir": "output_dir", "deepspeed": "deepspeed",
            "remove_unused_columns": "(our collator needs every column)"}


@functools.lru_cache(maxsize=1)
def hf_fields() -> Dict[str, Any]:
    """TrainingArguments' init fields -> declared types."""
    from transformers import TrainingArguments

    try:
        hints = typing.get_type_hints(TrainingArguments)
    except Exception:  # an annotation that does not resolve in this transformers version
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(TrainingArguments) if f.init}


def split_training_args(data: Dict[str, Any], ours: Set[str], where: str = "<config>") -> Dict[str, Any]:
    """Move top-level keys that only TrainingArguments knows into ``training_args`` (typed); unknown -> error."""

    data = dict(data)
    passthrough = dict(data.get("training_args") or {})
    known = hf_fields()
    for key in list(data):
        if key in ours:
            continue
        if key in known:
            passthrough[key] = data.pop(key)
        else:
            raise typed.unknown_field_error(key, ours | set(known), where)
    for key, value in list(passthrough.items()):
        if key not in known:
            raise typed.unknown_field_error(f"training_args.{key}", known, where)
        if key in RESERVED:
            raise ValueError(f"{where}: training_args.{key} is set by mllm ({RESERVED[key]}); "
                             f"use the training config's own field")
        try:
            passthrough[key] = typed.coerce(known[key], value, key)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
    if passthrough:
        data["training_args"] = passthrough
    return data


COMPILE_FIELDS = ("torch_compile", "torch_compile_backend", "torch_compile_mode")


def compile_options(cfg) -> Optional[Dict[str, Any]]:
    """``torch_compile: true`` (or a ``torch_compile_backend`` / ``torch_compile_mode``, which imply it, as in
    TrainingArguments) -> ``mllm.compiling.compile_blocks`` keyword arguments; None when off."""
    ta = cfg.training_args
    if not (ta.get("torch_compile") or ta.get("torch_compile_backend") or ta.get("torch_compile_mode")):
        return None
    return {"backend": ta.get("torch_compile_backend"), "mode": ta.get("torch_compile_mode")}


def training_arguments(cfg, ds_path: Optional[str]):
    """The Trainer's arguments: ours first, then the pass-through fields (they win, except RESERVED)."""
    from transformers import TrainingArguments

    cuda = torch.cuda.is_available()
    # TensorBoard (report_to: [tensorboard]) logs into each stage's own output_dir/tensorboard
    os.environ["TENSORBOARD_LOGGING_DIR"] = os.path.join(cfg.output_dir, "tensorboard")
    kwargs = dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.resolved_lr(),
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        warmup_steps=float(cfg.warmup_ratio),  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=cfg.bf16,
        logging_steps=cfg.logging_steps,
        save_strategy="steps" if cfg.save_steps > 0 else "no",
        save_steps=max(cfg.save_steps, 1),
        save_total_limit=None,  # MLLMTrainer keeps the last N *complete* checkpoints itself
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to=list(cfg.report_to) or "none",
        deepspeed=ds_path,
        use_cpu=not cuda,  # on CPU DeepSpeed needs it, or every rank thinks it is rank 0
        remove_unused_columns=False,
        dataloader_num_workers=cfg.dataloader_num_workers,
        include_num_input_tokens_seen=True,
        disable_tqdm=False,
        ddp_find_unused_parameters=False,
    )
    kwargs.update({k: v for k, v in cfg.training_args.items() if k not in RESERVED})
    # the runner enables gradient checkpointing on the model itself (tower and LLM separately), and applies
    # torch_compile to the transformer blocks (compile_options): the Trainer would compile the whole model
    for key in ("gradient_checkpointing", "gradient_checkpointing_kwargs") + COMPILE_FIELDS:
        kwargs.pop(key, None)
    return TrainingArguments(**kwargs)

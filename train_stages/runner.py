"""The shared stage runner: one function runs any stage spec on transformers' Trainer + DeepSpeed ZeRO.

    from train_stages.runner import run_stage
    from train_stages.specs import TrainConfig
    run_stage(TrainConfig.load("align.yaml"))

It loads the model (``init_from`` checkpoint, or a preset for a first stage), applies the stage's module
policy, logs the parameter table, builds the data, trains, and writes a consolidated checkpoint
(``save_pretrained`` layout; LoRA merged or kept as an adapter) into ``output_dir`` for the next stage.
Runs the same on one CPU, under ``torchrun --nproc_per_node N`` and under the ``deepspeed`` launcher.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Dict, Optional

import torch
import torch.distributed as dist

from mllm.attention import use_packed_attention
from mllm.compiling import compile_blocks
from mllm.config import apply_overrides
from mllm.gen.head import GenHeadConfig
from mllm.model import MultimodalLM
from mllm.presets import get_preset

from .consolidate import consolidate_and_save
from .data import build_training_data
from .freeze import apply_policy, param_table, per_module_param_groups
from .hf_args import compile_options, training_arguments
from .specs import TrainConfig
from .trainer import (DataPositionCallback, EMACallback, MetricsCallback, MLLMTrainer, gathered_state_dict,
                      latest_checkpoint, remove_incomplete_checkpoints)

log = logging.getLogger("mllm.train")
HERE = os.path.dirname(os.path.abspath(__file__))
ZERO_CONFIGS = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_logging() -> None:
    level = logging.INFO if rank() == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank{rank()}] %(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mllm").setLevel(level)


def resolve_deepspeed(name: Optional[str]) -> Optional[str]:
    if name in (None, "", "none"):
        return None
    if name in ZERO_CONFIGS:
        return os.path.join(HERE, ZERO_CONFIGS[name])
    if os.path.exists(name):
        return name
    raise ValueError(f"deepspeed config {name!r} is neither one of {', '.join(ZERO_CONFIGS)} nor 'none' nor a file")


def materialize_deepspeed(path: Optional[str], hidden_size: int, out_dir: str) -> Optional[str]:
    """Fill the model-size "auto" entries (bucket sizes) the way transformers would from a plain HF config
    (ours is multimodal, so it can't find ``hidden_size``); batch size, LR, precision stay "auto" for the
    Trainer. The resolved file is written into the run directory."""
    if not path:
        return None
    with open(path) as f:
        cfg = json.load(f)
    zero = cfg.get("zero_optimization", {})
    sizes = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    resolved = os.path.join(out_dir, "deepspeed_config.json")
    # every rank writes the same content atomically, so no rank can read a half-written file
    tmp = f"{resolved}.rank{rank()}.tmp"
    with open(tmp, "w") as f:
        json.dump(cfg, f, indent=2)
    os.replace(tmp, resolved)
    return resolved


def zero_stage(path: Optional[str]) -> int:
    if not path:
        return 0
    with open(path) as f:
        return int(json.load(f).get("zero_optimization", {}).get("stage", 0))


def needs_vision_every_step(model, world: int) -> bool:
    """Whether a text-only batch must still run the tower + connector (a zero-weighted dummy tile).

    Under several ranks, ZeRO-3 gathers and ZeRO-2/DDP gradient reductions need every rank to touch the same
    parameters each step. On one rank, a text-only batch whose loss reaches no trainable parameter (stage 1:
    only the connector learns, and the modality-grouped sampler makes text-only batches) has no graph to
    back-propagate; the dummy pass gives it one, with zero gradients."""
    if world > 1:
        return True
    return not any(p.requires_grad for p in model.llm.parameters())


def load_start_model(cfg: TrainConfig):
    """The stage's input model, in full precision (explicit ``init_from``, or a preset for a first stage)."""
    if cfg.init_from:
        model = MultimodalLM.from_pretrained(cfg.init_from)
    else:
        model = MultimodalLM.build(apply_overrides(get_preset(cfg.model), cfg.model_overrides))
    if cfg.spec.objective == "gen":
        ensure_gen_head(model, cfg)
    return model


def ensure_gen_head(model, cfg: TrainConfig) -> None:
    """The gen stage trains a head: add a fresh one (``cfg.gen_head``) to a model without; a model that has
    one keeps it, and a ``cfg.gen_head`` that describes a different head is an error, not silently ignored."""
    if model.gen_head is None:
        model.add_gen_head(cfg.gen_head)
        log.info("added a fresh image-generation head: %s", json.dumps(model.config.gen_head.to_dict()))
        return
    if cfg.gen_head is not None:
        wanted, have = GenHeadConfig.from_dict(dict(cfg.gen_head)).to_dict(), model.config.gen_head.to_dict()
        if wanted != have:
            raise ValueError(f"gen_head in the training config ({json.dumps(wanted)}) differs from the head "
                             f"{cfg.init_from or cfg.model} already has ({json.dumps(have)}); "
                             f"drop 'gen_head' to keep training that head")


def run_stage(cfg: TrainConfig) -> Dict:
    from transformers import set_seed

    setup_logging()
    t0 = time.time()
    set_seed(cfg.seed)
    os.makedirs(cfg.output_dir, exist_ok=True)
    ds_path = resolve_deepspeed(cfg.resolved_zero())
    if cfg.module("llm").mode == "qlora" and zero_stage(ds_path) == 3:
        log.warning("QLoRA with ZeRO-3 needs bitsandbytes' quant_storage support on your platform; "
                    "falling back to ZeRO-2")
        ds_path = resolve_deepspeed("zero2")
    if cfg.spec.objective == "gen" and world_size() > 1 and not ds_path:
        raise ValueError(f"stage {cfg.stage!r} on {world_size()} ranks needs DeepSpeed (deepspeed: zero2): the "
                         f"image head's loss is not the model's forward, which plain DDP needs for its reduction")
    if cfg.ema_decay and cfg.spec.objective != "gen":
        raise ValueError(f"ema_decay is for the gen stage's head; stage {cfg.stage!r} trains no head")
    if rank() == 0:
        cfg.save(os.path.join(cfg.output_dir, "train_config.json"))

    model = load_start_model(cfg)
    if cfg.packing and cfg.spec.objective != "gen":
        # packed rows: attention per sample (sdpa -> sdpa_packed; flash / flex read the restarts themselves)
        log.info("packing: LLM attention %s", use_packed_attention(model.llm))
    groups = apply_policy(model, cfg)
    model.always_run_vision = cfg.always_run_vision if cfg.always_run_vision is not None \
        else needs_vision_every_step(model, world_size())
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(vision=cfg.module("vision").mode != "frozen",
                                            kwargs=cfg.training_args.get("gradient_checkpointing_kwargs"))
    compile_opts = compile_options(cfg)
    if compile_opts is not None:
        log.info("torch_compile: %d transformer blocks compiled (%s)", compile_blocks(model, **compile_opts),
                 compile_opts["backend"] or "inductor")
    log.info("stage %s: trainable / frozen parameters\n%s", cfg.stage, param_table(model))
    if rank() == 0:
        model.config.save(os.path.join(cfg.output_dir, "mllm_config.resolved.json"))

    data = build_training_data(cfg, model)
    hidden = model.llm.get_input_embeddings().weight.shape[1]
    args = training_arguments(cfg, materialize_deepspeed(ds_path, hidden, cfg.output_dir))
    metrics_path = os.path.join(cfg.output_dir, "metrics.jsonl")
    callbacks = [MetricsCallback(metrics_path, cfg.stage)]
    if data.sampler is not None:
        callbacks.append(DataPositionCallback(data.sampler))
    trainer = MLLMTrainer(
        model=model, args=args, train_dataset=data.dataset, data_collator=data.collator,
        param_groups=per_module_param_groups(groups, cfg, cfg.weight_decay), keep_last=cfg.save_total_limit,
        callbacks=callbacks, skip_stats=data.skip_stats,
    )
    if data.sampler is not None:
        trainer._get_train_sampler = lambda *a, **k: data.sampler  # our modality-grouped, resumable order

    resume = None
    if cfg.resume == "auto":
        if rank() == 0:
            for path in remove_incomplete_checkpoints(cfg.output_dir):
                log.warning("removed incomplete checkpoint %s (the run was stopped while saving it)", path)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        resume = latest_checkpoint(cfg.output_dir)
        log.info("resume=auto: %s", resume or "no complete checkpoint, starting fresh")
    elif cfg.resume:
        resume = cfg.resume
    if cfg.ema_decay:
        trainer.add_callback(EMACallback(model.gen_head, cfg.ema_decay, resume_from=resume))
    # the preflight check reads the first batches before any step: mis-masked or mis-tokenised data
    # is an error here, not a silent zero loss later
    data.preflight()
    result = trainer.train(resume_from_checkpoint=resume)

    state = gathered_state_dict(trainer)
    summary = {"stage": cfg.stage, "steps": trainer.state.global_step, "train_loss": result.training_loss,
               "seconds": round(time.time() - t0, 1), "world_size": world_size(),
               "zero_stage": zero_stage(ds_path), "data": data.stats()}
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    if losses:
        summary["first_loss"], summary["last_loss"] = losses[0], losses[-1]
    if rank() == 0:
        consolidate_and_save(cfg, state, load_start_model)
        with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        log.info("stage %s done: %s", cfg.stage, json.dumps(summary))
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return summary

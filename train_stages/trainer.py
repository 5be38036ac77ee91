"""transformers' Trainer, adapted: per-module learning rates, atomic checkpoints, metrics JSONL, tokens/s.

Checkpoints are written by the Trainer (model, optimizer, scheduler, RNG, trainer state — DeepSpeed's
own files under ZeRO) and then marked complete: ``mllm_complete.json`` is written by rank 0 only after
every rank has finished writing. ``latest_checkpoint`` ignores unmarked directories, so a run killed
while saving resumes from the previous, complete checkpoint.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback

from mllm.checkpoint import load_state_dict_files, load_weights, save_state_dict, unique_state_dict

COMPLETE_MARKER = "mllm_complete.json"
EMA_FILE = "ema.safetensors"  # EMACallback's average, in each checkpoint
_CKPT_RE = re.compile(r"^checkpoint-(\d+)$")


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def list_checkpoints(output_dir: str, complete_only: bool = True) -> List[str]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        m = _CKPT_RE.match(name)
        path = os.path.join(output_dir, name)
        if m and os.path.isdir(path) and (not complete_only or os.path.exists(os.path.join(path, COMPLETE_MARKER))):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(output_dir: str) -> Optional[str]:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def remove_incomplete_checkpoints(output_dir: str) -> List[str]:
    """Delete checkpoint dirs without the completion marker (left by a run killed while saving)."""
    complete = set(list_checkpoints(output_dir))
    removed = []
    for path in list_checkpoints(output_dir, complete_only=False):
        if path not in complete:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class MLLMTrainer(Trainer):
    """``keep_last``: how many complete checkpoints to keep (the Trainer's own rotation is left off, since it
    runs before the new checkpoint is marked complete)."""

    def __init__(self, *args, param_groups: Optional[List[Dict]] = None, keep_last: Optional[int] = None,
                 skip_stats=None, **kwargs):
        self._mllm_param_groups = param_groups
        self._keep_last = keep_last
        self._skip_stats = skip_stats
        super().__init__(*args, **kwargs)

    def training_step(self, model, inputs, *args, **kwargs):
        # records skipped inside DataLoader workers travel with the batch; count them here, exactly once
        skips = inputs.pop("data_skips", None)
        if skips and self._skip_stats is not None:
            self._skip_stats.add_events(skips)
        return super().training_step(model, inputs, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "gen_images" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        # a gen batch (train_stages.gen_data): the image head's own loss method. DeepSpeed reduces gradients
        # from its parameter hooks, so calling the unwrapped model's method is safe there; DDP is refused by
        # the runner for this stage (its reducer only arms in the wrapper's forward)
        core = self.accelerator.unwrap_model(model)
        loss = core.gen_loss(inputs["input_ids"], inputs["attention_mask"], inputs["gen_images"])
        return (loss, {"loss": loss}) if return_outputs else loss

    def create_optimizer(self, model=None):
        if self.optimizer is None and self._mllm_param_groups is not None:
            groups = [{k: v for k, v in g.items() if k != "name"} for g in self._mllm_param_groups]
            optim_cls, optim_kwargs = Trainer.get_optimizer_cls_and_kwargs(self.args)
            optim_kwargs.pop("lr", None)
            self.optimizer = optim_cls(groups, lr=self.args.learning_rate, **optim_kwargs)
            return self.optimizer
        return super().create_optimizer(model)

    def _save(self, output_dir: Optional[str] = None, state_dict=None):
        # the Trainer's own writer refuses tied (shared) tensors; store each storage once, as save_pretrained does
        output_dir = output_dir or self.args.output_dir
        os.makedirs(output_dir, exist_ok=True)
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        save_state_dict(unique_state_dict(state_dict), output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.is_deepspeed_enabled:  # DeepSpeed restores its own (sharded) model states
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

        model = model if model is not None else self.model
        load_weights(self.accelerator.unwrap_model(model), load_state_dict_files(resume_from_checkpoint),
                     source=resume_from_checkpoint)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        _barrier()  # every rank has written its shard
        if self.args.should_save:
            path = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            for callback in self.callback_handler.callbacks:  # state kept beside the weights (EMACallback)
                if hasattr(callback, "save_to"):
                    callback.save_to(path)
            tmp = os.path.join(path, COMPLETE_MARKER + ".tmp")
            with open(tmp, "w") as f:
                json.dump({"global_step": self.state.global_step, "time": time.time()}, f)
            os.replace(tmp, os.path.join(path, COMPLETE_MARKER))
            if self._keep_last:
                for old in list_checkpoints(self._get_output_dir(trial=trial))[:-self._keep_last]:
                    shutil.rmtree(old, ignore_errors=True)
        _barrier()


class MetricsCallback(TrainerCallback):
    """Adds tokens/s to the logs (so the progress bar shows it) and appends every log to metrics.jsonl."""

    def __init__(self, path: str, stage: str):
        self.path = path
        self.stage = stage
        self._t = None
        self._tokens = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._t = time.time()
        self._tokens = state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        now = time.time()
        seen = state.num_input_tokens_seen or 0
        if self._t is not None and now > self._t and seen > self._tokens:
            logs["tokens_per_s"] = round((seen - self._tokens) / (now - self._t), 1)
        self._t, self._tokens = now, seen
        if state.is_world_process_zero:
            rec = {"stage": self.stage, "step": state.global_step, "epoch": state.epoch, "time": now, **logs}
            with open(self.path, "a") as f:
                f.write(json.dumps(rec) + "\n")


class EMACallback(TrainerCallback):
    """An exponential moving average of ``module``'s trainable parameters (as DiT samples from), copied into
    them when training ends, so the saved model holds the average. ``decay`` d per step, warmed up as
    min(d, (1 + step) / (10 + step)) so the first steps do not keep the initialisation. The average lives
    in float32 beside the parameters (under ZeRO-2 every rank holds full parameters, so nothing is
    gathered); each checkpoint keeps it in ``EMA_FILE``, and ``resume_from`` (a checkpoint directory)
    restores it, so a resumed run averages as an uninterrupted one does."""

    def __init__(self, module: torch.nn.Module, decay: float, resume_from: Optional[str] = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names, self.params = [n for n, _ in named], [p for _, p in named]
        self.shadow = [p.detach().float().clone() for p in self.params]
        if resume_from:
            path = os.path.join(resume_from, EMA_FILE)
            if not os.path.exists(path):
                raise ValueError(f"resuming with ema_decay from {resume_from}, which has no {EMA_FILE} (it was "
                                 f"written without an EMA); resume without ema_decay or start afresh")
            from safetensors.torch import load_file

            saved = load_file(path)
            self.shadow = [saved[n].float().clone() for n in self.names]

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                s.mul_(d).add_(p.detach().float(), alpha=1.0 - d)

    def save_to(self, checkpoint_dir: str) -> None:
        """Called by ``MLLMTrainer`` while it writes a checkpoint, before marking it complete."""
        from safetensors.torch import save_file

        save_file({n: s.contiguous() for n, s in zip(self.names, self.shadow)}, os.path.join(checkpoint_dir, EMA_FILE))

    def on_train_end(self, args, state, control, **kwargs):
        with torch.no_grad():
            for s, p in zip(self.shadow, self.params):
                p.copy_(s.to(p.dtype))


class DataPositionCallback(TrainerCallback):
    """Gives the sampler its epoch (deterministic shuffle per epoch) at the start of each epoch."""

    def __init__(self, sampler):
        self.sampler = sampler

    def on_epoch_begin(self, args, state, control, **kwargs):
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(int(state.epoch or 0))


def gathered_state_dict(trainer: Trainer) -> Optional[Dict[str, torch.Tensor]]:
    """The full (consolidated) state dict on rank 0, under any ZeRO stage; None on other ranks."""
    model = trainer.model_wrapped if trainer.is_deepspeed_enabled else trainer.model
    if trainer.is_deepspeed_enabled:
        state = trainer.accelerator.get_state_dict(trainer.deepspeed)
    else:
        state = trainer.accelerator.unwrap_model(model).state_dict()
    if not trainer.args.should_save:
        return None
    return {k: v.detach().cpu() for k, v in state.items()}

"""Shared pieces of the training tests: a tiny Shapes world, a tiny start checkpoint, stage configs."""
from __future__ import annotations

import os
from typing import Dict

import torch
from safetensors.torch import load_file

from mllm.model import MultimodalLM

from ._tiny import tiny_config


def make_world(root: str, n_train: int = 24, n_test: int = 8) -> str:
    from data_pipelines.shapes import make_shapes

    out = os.path.join(root, "shapes")
    make_shapes(out, seed=0, n_train=n_train, n_test=n_test, overwrite=True)
    return out


def make_start(root: str, **kw) -> str:
    torch.manual_seed(0)
    out = os.path.join(root, "start")
    MultimodalLM.build(tiny_config(**kw)).save_pretrained(out)
    return out


def stage_dict(stage: str, out: str, init_from: str, data: str, **extra) -> Dict:
    d = dict(stage=stage, output_dir=out, init_from=init_from, data=[{"path": data}], deepspeed="none",
             per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2, warmup_ratio=0.0, save_steps=0,
             logging_steps=1, seed=0, max_length=512)
    d.update(extra)
    return d


def weights(path: str) -> Dict[str, torch.Tensor]:
    return load_file(os.path.join(path, "model.safetensors"))


def changed_prefixes(before: Dict[str, torch.Tensor], after: Dict[str, torch.Tensor]) -> Dict[str, bool]:
    """For each top-level module: did any of its tensors change?"""
    assert before.keys() == after.keys()
    out: Dict[str, bool] = {}
    for k in before:
        top = k.split(".")[0]
        out[top] = out.get(top, False) or not torch.equal(before[k], after[k])
    return out

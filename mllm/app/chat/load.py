"""Pick and load the chat backend for a directory.

    backend = load_backend("ckpt/", device="cpu", bf16=False)   # MllmBackend or TransformersBackend
    checkpoint_kind("ckpt/")                                    # "mllm" | "transformers"
"""
from __future__ import annotations

import os

import torch

from mllm.config import CONFIG_NAME

from .backends import ChatBackend, MllmBackend
from .hf_backend import TransformersBackend
from .prompt import ChatError


def checkpoint_kind(path: str) -> str:
    """``"mllm"`` (our checkpoint) or ``"transformers"`` (an export / a transformers directory)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return "mllm"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "transformers"
    raise ChatError(f"{path}: neither {CONFIG_NAME} (an mllm checkpoint) nor config.json (a transformers "
                    f"checkpoint, e.g. from `mllm export`)")


def resolve_device(device: str) -> str:
    if device == "cpu":
        return device
    if device == "cuda" or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ChatError(f"--device {device}: no CUDA device is available (torch {torch.__version__}, "
                            f"built {'with' if torch.version.cuda else 'without'} CUDA); use --device cpu")
        return device
    raise ChatError(f"--device {device!r}: expected cpu, cuda or cuda:N")


def load_backend(path: str, *, device: str = "cpu", bf16: bool = False,
                 trust_remote_code: bool = False) -> ChatBackend:
    """The right backend for the directory ``path`` (see ``checkpoint_kind``), on ``device``."""
    kind = checkpoint_kind(path)
    device = resolve_device(device)
    dtype = torch.bfloat16 if bf16 else None
    if kind == "mllm":
        return MllmBackend.from_pretrained(path, device=device, dtype=dtype)
    return TransformersBackend(path, device=device, dtype=dtype or torch.float32, trust_remote_code=trust_remote_code)

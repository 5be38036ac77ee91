"""The model a benchmark runs, and the fingerprint that ties saved predictions to it.

    model = load_model("ckpt", device="cuda", bf16=True)   # MultimodalLM, eval mode, the local rank's GPU
    model_fingerprint("ckpt")                              # {"path", "files": {name: [size, mtime_ns]}}
"""
from __future__ import annotations

import os
from typing import Any, Dict

import torch

from mllm.model import MultimodalLM


def load_model(path: str, device: str = "cpu", bf16: bool = False):
    """``MultimodalLM.from_pretrained`` on ``device`` (``cuda`` picks the local rank's GPU), eval mode."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here")
    if device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
        torch.cuda.set_device(device)
    return MultimodalLM.from_pretrained(path, device=device, dtype=torch.bfloat16 if bf16 else None).eval()


def model_fingerprint(path: str) -> Dict[str, Any]:
    """The checkpoint's path and its files' sizes and mtimes: a retrained checkpoint in the same place
    does not silently resume an old run's predictions."""
    files = {}
    for name in sorted(os.listdir(path)):
        full = os.path.join(path, name)
        if os.path.isfile(full) and (name.endswith(".safetensors") or name.endswith(".json")):
            st = os.stat(full)
            files[name] = [st.st_size, st.st_mtime_ns]
    return {"path": os.path.abspath(path), "files": files}

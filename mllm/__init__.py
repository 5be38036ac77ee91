"""mllm: multimodal LLMs from one config — any vision tower + any connector + any HF causal LM.

    from mllm import MultimodalLM, get_preset
    model = MultimodalLM.build(get_preset("tiny"))
"""
from __future__ import annotations

__version__ = "0.1.0"

_LAZY = {
    "MultimodalLM": ("mllm.model", "MultimodalLM"),
    "ModelConfig": ("mllm.config", "ModelConfig"),
    "get_preset": ("mllm.presets", "get_preset"),
    "load_pretrained": ("mllm.model", "load_pretrained"),
}


def __getattr__(name):  # lazy so that `mllm --help` does not import torch
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(mod), attr)
    raise AttributeError(f"module 'mllm' has no attribute {name!r}")


__all__ = list(_LAZY) + ["__version__"]

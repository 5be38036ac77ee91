"""``torch.compile`` for training, applied to the repeated transformer blocks (regional compilation).

Compiling the whole ``MultimodalLM`` traces its Python image bookkeeping (per-image tile counts, AnyRes
packing, token-count checks: data-dependent control flow that breaks the graph at every step) and compiles
a graph per distinct batch shape. The decoder layers of the LLM and the encoder layers of the vision tower
hold almost all the FLOPs and are identical blocks: each is compiled in place (``nn.Module.compile``, so
parameter names and checkpoints are unchanged) and, as the blocks share their code, dynamo compiles one
graph for all of them. Packed-row attention (``mllm.attention``) runs outside the graph.

    n = compile_blocks(model, backend="inductor", mode=None)   # number of blocks compiled
"""
from __future__ import annotations

from typing import Optional

from torch import nn


def block_class_names(model: nn.Module) -> set:
    """The transformer-block classes the model's transformers parts declare (``_no_split_modules``)."""
    names = set()
    for m in model.modules():
        for n in getattr(m, "_no_split_modules", None) or ():
            if n.endswith("Layer"):
                names.add(n)
    return names


def compile_blocks(model: nn.Module, backend: Optional[str] = None, mode: Optional[str] = None,
                   dynamic: Optional[bool] = None) -> int:
    """Compile every repeated block of ``model`` in place; returns how many were compiled."""
    names = block_class_names(model)
    opts = {"backend": backend or "inductor", "dynamic": dynamic}
    if mode:
        opts["mode"] = mode
    n = 0
    for m in model.modules():
        if type(m).__name__ in names:
            m.compile(**opts)
            n += 1
    if n == 0:
        raise ValueError(f"torch_compile: no transformer blocks found in {type(model).__name__} "
                         f"(no _no_split_modules '*Layer' classes)")
    return n

"""Attention for packed rows: each sample of a packed row attends only to itself, and no masked block is computed.

A packed row (``data_pipelines.collate.PackingCollator``) holds several samples back to back; ``position_ids``
restart at 0 for each and there is no ``attention_mask``. What each attention implementation does with it:

- ``flash_attention_2`` (CUDA): transformers reads the restarts in ``position_ids`` and calls the varlen
  kernel (``cu_seqlens``): no masked block is computed. Used as is.
- ``flex_attention``: transformers builds a ``BlockMask`` from the restarts; fully masked blocks are skipped.
  Used as is (torch has no flex backward on CPU, so it trains on CUDA only).
- ``eager``: a dense block-diagonal mask built by transformers (full L x L work). The reference.
- ``sdpa``: transformers would build the same dense (B, 1, L, L) mask, and SDPA then does the full L x L work
  of the row, every masked block included. ``packed_attention_implementation("sdpa")`` returns
  ``"sdpa_packed"`` instead: registered here with transformers' ``AttentionInterface``, it runs one causal
  SDPA call per sample (``is_causal=True``, no mask: SDPA's fused kernels) on that sample's slice of the row.
  Its cost is the sum of the samples' squares instead of the row's square.

``sdpa_packed`` is a superset of ``sdpa``: batches with an attention mask (padding, a KV cache, sliding
windows, custom mask overlays) take transformers' own sdpa path unchanged, so a model switched to it still
generates and trains on padded batches.

    from mllm.attention import use_packed_attention
    use_packed_attention(model.llm)     # sdpa -> sdpa_packed; other implementations stay what they are
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch.nn import functional as F

PACKED_SDPA = "sdpa_packed"

# position_ids tensor -> its segments; the same tensor object reaches every layer of one forward pass (and
# the recomputation under gradient checkpointing), so the host sync happens once per forward, not per layer
_last: List[Tuple[torch.Tensor, List[List[Tuple[int, int]]]]] = []


def packed_attention_implementation(name: str) -> str:
    """The implementation packed rows should use when a model is configured with ``name``."""
    return PACKED_SDPA if name == "sdpa" else name


def use_packed_attention(llm) -> str:
    """Switch a transformers model to the packed-row implementation of its configured attention; returns
    its name. Idempotent; the model's config still says what it was built with once saved (see ``restore``)."""
    register()
    current = llm.config._attn_implementation
    target = packed_attention_implementation(current)
    if target != current:
        llm.set_attn_implementation(target)
    return target


def restore_attention(llm) -> None:
    """Undo ``use_packed_attention`` (``sdpa_packed`` -> ``sdpa``), e.g. before saving or exporting."""
    if getattr(llm.config, "_attn_implementation", None) == PACKED_SDPA:
        llm.set_attn_implementation("sdpa")


def segments(position_ids: torch.Tensor) -> List[List[Tuple[int, int]]]:
    """(B, L) positions restarting at each sample -> per row, the (start, end) of each sample."""
    if _last and _last[0][0] is position_ids:
        return _last[0][1]
    pos = position_ids.detach().cpu()
    restarts = torch.ones_like(pos, dtype=torch.bool)
    restarts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    L = pos.shape[1]
    out = []
    for row in restarts:
        starts = row.nonzero().flatten().tolist()
        out.append(list(zip(starts, starts[1:] + [L])))
    _last[:] = [(position_ids, out)]
    return out


@torch.compiler.disable  # data-dependent segment loop: runs eagerly inside a compiled block
def packed_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                          scaling: Optional[float] = None, is_causal: Optional[bool] = None,
                          position_ids: Optional[torch.Tensor] = None, **kwargs):
    """transformers' attention-function signature: query (B, H, L, D), key / value (B, H_kv, L, D) ->
    ((B, L, H, D), None). One causal SDPA call per sample of each row when the row is packed."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    L = query.shape[2]
    if (attention_mask is not None or position_ids is None or not causal or key.shape[2] != L or L == 1
            or kwargs.get("position_bias") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    B = query.shape[0]
    if position_ids.shape[0] != B:
        position_ids = position_ids.expand(B, -1)
    rows = segments(position_ids)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    opts = dict(dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
    if all(len(r) == 1 for r in rows):  # nothing packed: one call for the batch
        out = F.scaled_dot_product_attention(query, key, value, **opts)
    else:
        per_row = []
        for b, spans in enumerate(rows):
            q, k, v = query[b:b + 1], key[b:b + 1], value[b:b + 1]
            parts = [F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], **opts)
                     for s, e in spans]
            per_row.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
        out = torch.cat(per_row, dim=0)
    return out.transpose(1, 2).contiguous(), None


def packed_sdpa_mask(*args, attention_mask: Optional[torch.Tensor] = None, **kwargs):
    """Mask builder for ``sdpa_packed``: no mask at all when the batch has no padding mask, plain causal
    structure and no cache offset (the attention function reads the samples from ``position_ids``); otherwise
    transformers' sdpa mask, so every other case behaves exactly as ``sdpa``."""
    from transformers.masking_utils import sdpa_mask

    names = ("batch_size", "q_length", "kv_length", "q_offset", "kv_offset")
    given = dict(zip(names, args), **{k: kwargs[k] for k in names if k in kwargs})
    plain = (attention_mask is None and not kwargs.get("use_vmap") and kwargs.get("local_size") is None
             and given.get("q_length") == given.get("kv_length") and not _nonzero(given.get("q_offset"))
             and not _nonzero(given.get("kv_offset")) and not _windowed(kwargs.get("config")))
    if plain:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


def _nonzero(v) -> bool:
    if v is None:
        return False
    return bool(v != 0) if not isinstance(v, torch.Tensor) else bool((v != 0).any())


def _windowed(config) -> bool:
    """Sliding-window or chunked attention layers: their masks are not plain causal."""
    if config is None:
        return False
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return True
    return bool(getattr(config, "attention_chunk_size", None))


def register() -> None:
    """Register ``sdpa_packed`` with transformers (attention function and mask builder). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)

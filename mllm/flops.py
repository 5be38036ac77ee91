"""FLOP accounting, MFU and the decode roofline of a multimodal LM, from its architecture alone.

    from mllm import flops
    llm = flops.decoder_shape(cfg.llm.config)                  # layers, widths, vocab of the HF decoder
    tower = flops.tower_shape(cfg.vision)                      # the layers the features need
    f = flops.step_flops(llm, segments=[900, 2100], tower=tower, tiles=10, connector_params=21e6)
    f["total"] / seconds / 1e12 / peak_tflops                  # MFU; flops.FORMULA says what is counted
    flops.roofline_tokens_per_s(flops.decode_bytes_per_token(llm, context=1200), hbm_bytes_per_s=4.8e12)

Model FLOPs (the convention of MFU): every matrix multiply counts 2 FLOPs per weight per token forward;
a part whose weights train counts 3x forward (backward = 2x forward), a frozen part that gradients pass
through 2x, a frozen part nothing before trains 1x. Recomputation by activation checkpointing is not
counted (it is hardware work, not model work), nor are norms, activations, softmax or the optimizer.
Attention adds 4 * heads * head_dim FLOPs per (query, key) pair and layer forward (QK^T and AV); the
decoder counts causal pairs within each sequence (s * (s + 1) / 2 for a sequence of s real tokens, so
padding and other samples of a packed row are not useful work), the tower every pair of a tile.

Decoding one token at batch 1 reads every decoder weight once (the input embedding table only by one
row) plus the KV cache of the context, so HBM bandwidth / those bytes bounds tokens/s from above.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

FORMULA = ("train FLOPs = m_llm * 2 * N_llm * T + m_llm * 4 * L * H_attn * sum_seq s(s+1)/2"
           " + m_tower * (2 * N_tower * tiles * t + 4 * L_v * H_v * tiles * t^2)"
           " + m_conn * 2 * N_conn * tiles * t'  (N: weights of the matrix multiplies, lm_head included;"
           " T: real tokens; s: real tokens of each sequence; t: tower tokens per tile, t': tokens the connector"
           " maps; m = 3 trained, 2 frozen with gradients through it, 1 frozen)")

# models whose MLP is two matrices (fc1, fc2) instead of gated three (gate, up, down)
_UNGATED = ("opt", "gpt2", "gpt_neox", "gptj", "bloom", "falcon", "phi")


@dataclass(frozen=True)
class DecoderShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    gated: bool = True

    @property
    def attn_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """Matrix-multiply weights of one block: q, k, v, o and the MLP."""
        attn = 2 * self.hidden * self.attn_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return attn + (3 if self.gated else 2) * self.hidden * self.intermediate

    @property
    def matmul_params(self) -> int:
        """Weights every token multiplies by: all blocks and the LM head (not the embedding lookup)."""
        return self.layers * self.layer_params + self.hidden * self.vocab

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


@dataclass(frozen=True)
class TowerShape:
    layers: int  # blocks that run (up to the deepest selected hidden state)
    hidden: int
    intermediate: int
    image_size: int
    patch_size: int
    cls: bool = True

    @property
    def tokens_per_tile(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + int(self.cls)

    @property
    def matmul_params(self) -> int:
        """Per-token weights of the blocks (q, k, v, o, fc1, fc2)."""
        return self.layers * (4 * self.hidden * self.hidden + 2 * self.hidden * self.intermediate)

    @property
    def patch_params(self) -> int:
        return 3 * self.patch_size * self.patch_size * self.hidden


def _get(cfg: Mapping[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if cfg.get(n) is not None:
            return cfg[n]
    if default is None:
        raise ValueError(f"the architecture config has none of {', '.join(names)}")
    return default


def decoder_shape(hf_config: Mapping[str, Any], vocab: Optional[int] = None) -> DecoderShape:
    """From an HF decoder config dict (``LLMConfig.config``: llama, qwen2, mistral, opt, ...). ``vocab``
    overrides the config's (the built model's embeddings, after the <image> token was added)."""
    hidden = int(_get(hf_config, "hidden_size", "n_embd", "d_model"))
    heads = int(_get(hf_config, "num_attention_heads", "n_head"))
    head_dim = int(_get(hf_config, "head_dim", default=hidden // heads))
    return DecoderShape(
        layers=int(_get(hf_config, "num_hidden_layers", "n_layer")), hidden=hidden, heads=heads,
        kv_heads=int(_get(hf_config, "num_key_value_heads", default=heads)), head_dim=head_dim,
        intermediate=int(_get(hf_config, "intermediate_size", "ffn_dim", "n_inner", default=4 * hidden)),
        vocab=int(vocab if vocab is not None else _get(hf_config, "vocab_size")),
        gated=hf_config.get("model_type") not in _UNGATED)


def tower_shape(vision: Any) -> TowerShape:
    """From a ``VisionConfig`` of an HF tower (``hf_clip`` / ``hf_siglip`` with its ``config`` dict)."""
    from .vision.base import resolve_feature_layers  # lazy: keeps this module importable without torch

    if vision.kind not in ("hf_clip", "hf_siglip"):
        raise ValueError(f"FLOP accounting knows HF towers (hf_clip, hf_siglip), not {vision.kind!r}")
    c = vision.config
    if not c:
        raise ValueError("vision.config is empty: the FLOP accounting needs the tower's architecture")
    layers = int(c["num_hidden_layers"])
    return TowerShape(layers=max(resolve_feature_layers(vision.feature_layer, layers)),
                      hidden=int(c["hidden_size"]), intermediate=int(c["intermediate_size"]),
                      image_size=int(c["image_size"]), patch_size=int(c["patch_size"]),
                      cls=vision.kind == "hf_clip")


def causal_pairs(segments: Sequence[int]) -> int:
    """(query, key) pairs causal attention computes within each sequence."""
    return sum(s * (s + 1) // 2 for s in segments)


TRAIN_FULL = {"llm": 3, "tower": 3, "connector": 3}
# QLoRA stage: tower frozen (nothing before it trains), connector trains, LLM frozen with gradients through
TRAIN_QLORA = {"llm": 2, "tower": 1, "connector": 3}
FORWARD_ONLY = {"llm": 1, "tower": 1, "connector": 1}


def step_flops(llm: DecoderShape, segments: Sequence[int], *, tower: Optional[TowerShape] = None,
               tiles: int = 0, connector_params: int = 0, connector_tokens: Optional[int] = None,
               passes: Mapping[str, int] = TRAIN_FULL, extra_trained_params: int = 0) -> Dict[str, float]:
    """Model FLOPs of one step over ``segments`` (real tokens of each sequence) and ``tiles`` tower tiles.

    ``connector_tokens``: tokens per tile the connector maps (default: the tower's patches, CLS dropped).
    ``extra_trained_params``: adapter weights (LoRA) on the LLM's tokens, counted 3x like trained weights.
    Returns each term and their "total" (see ``FORMULA``)."""
    tokens = sum(segments)
    m_llm = passes["llm"]
    out = {"llm": m_llm * 2.0 * llm.matmul_params * tokens,
           "llm_attention": m_llm * 4.0 * llm.layers * llm.attn_dim * causal_pairs(segments),
           "adapters": 3 * 2.0 * extra_trained_params * tokens,
           "tower": 0.0, "tower_attention": 0.0, "connector": 0.0}
    if tower is not None and tiles:
        t = tower.tokens_per_tile
        m_v = passes["tower"]
        patches = t - int(tower.cls)
        out["tower"] = m_v * 2.0 * tiles * (tower.matmul_params * t + tower.patch_params * patches)
        out["tower_attention"] = m_v * 4.0 * tower.layers * tower.hidden * tiles * t * t
        n_conn = patches if connector_tokens is None else connector_tokens
        out["connector"] = passes["connector"] * 2.0 * connector_params * tiles * n_conn
    out["total"] = sum(out.values())
    return out


def mfu(model_flops: float, seconds: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak."""
    if seconds <= 0 or peak_tflops <= 0:
        raise ValueError(f"seconds and peak_tflops must be positive, got {seconds} and {peak_tflops}")
    return model_flops / seconds / (peak_tflops * 1e12)


def decode_bytes_per_token(llm: DecoderShape, context: float, dtype_bytes: int = 2) -> float:
    """HBM bytes one batch-1 decoding step reads: the decoder's weights (blocks + LM head; one embedding
    row) and the KV cache of ``context`` tokens."""
    weights = (llm.matmul_params + llm.hidden) * dtype_bytes
    return weights + llm.kv_bytes_per_token(dtype_bytes) * context


def roofline_tokens_per_s(bytes_per_token: float, hbm_bytes_per_s: float) -> float:
    """The memory-bound ceiling of batch-1 decoding."""
    if bytes_per_token <= 0 or hbm_bytes_per_s <= 0:
        raise ValueError("bytes_per_token and hbm_bytes_per_s must be positive")
    return hbm_bytes_per_s / bytes_per_token


# (substring of torch.cuda.get_device_name(), dense bf16 TFLOP/s, HBM GB/s): vendors' data sheets, no
# sparsity. Ordered so that a name matches its most specific entry first ("GH200" before "H200").
GPU_SPECS: Tuple[Tuple[str, float, float], ...] = (
    ("GH200", 989.0, 4000.0), ("H200", 989.0, 4800.0), ("H100 NVL", 835.0, 3900.0),
    ("H100 PCIe", 756.0, 2000.0), ("H100", 989.0, 3350.0), ("H800", 989.0, 3350.0),
    ("A100-SXM4-80GB", 312.0, 2039.0), ("A100 80GB PCIe", 312.0, 1935.0), ("A100", 312.0, 1555.0),
    ("L40S", 362.0, 864.0), ("L40", 181.0, 864.0), ("L4", 121.0, 300.0), ("A10", 125.0, 600.0),
    ("RTX 4090", 165.0, 1008.0), ("V100", 125.0, 900.0),
)


def gpu_specs(device_name: str) -> Optional[Tuple[float, float]]:
    """(peak dense bf16 TFLOP/s, HBM GB/s) of a device by its name, or None when the table lacks it."""
    for key, tflops, gbps in GPU_SPECS:
        if key.lower() in device_name.lower():
            return tflops, gbps
    return None


def fit_layers(budget_bytes: float, fixed_bytes: float, per_layer_bytes: float, layers: int) -> int:
    """The most decoder layers (<= ``layers``) whose estimated memory fits ``budget_bytes``; 0 if none."""
    if per_layer_bytes <= 0:
        raise ValueError("per_layer_bytes must be positive")
    room = budget_bytes - fixed_bytes
    return max(0, min(layers, int(room // per_layer_bytes)))

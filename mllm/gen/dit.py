"""DiT (Peebles & Xie, "Scalable Diffusion Models with Transformers") with cross-attention to condition tokens.

    cfg = DiTConfig.preset("tiny")                    # or "S", "B", "L", "XL"; DiTConfig.preset("B", input_size=64)
    dit = DiT(cfg)
    v = dit(x, t, cond, pooled)                       # x (B,C,H,W), t (B,) in [0,1], cond (B,K,Dc), pooled (B,Dc)

Each block: adaLN-Zero self-attention, cross-attention to ``cond`` (zero-initialised output projection) and
adaLN-Zero MLP. The adaLN conditioning vector is the timestep embedding plus a projection of ``pooled``.
At initialisation every block is an exact identity on the residual stream and the model outputs exact
zeros (adaLN modulation, cross-attention output and the final layer are zero-initialised).

This file imports only torch/math/stdlib: the remote-code export copies it verbatim next to the exported
modeling file.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

# S..XL are the paper's sizes at patch 2 on the 32x32x4 latents of a 256px SD VAE. "tiny" is pixel space
# 48x48 RGB for one CPU thread (0.9M params, 144 tokens): patch 4 divides the 16px cells of the Shapes
# "plus" layout, so a shape has the same patch alignment in every cell (patch 6 and 8 did worse in the
# same training time); hidden 96 gave more steps in a ~150 s budget than 128 at equal quality.
DIT_PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(input_size=48, patch_size=4, in_channels=3, hidden_size=96, depth=4, num_heads=4),
    "S": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=384, depth=12, num_heads=6),
    "B": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=768, depth=12, num_heads=12),
    "L": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1024, depth=24, num_heads=16),
    "XL": dict(input_size=32, patch_size=2, in_channels=4, hidden_size=1152, depth=28, num_heads=16),
}


@dataclass
class DiTConfig:
    input_size: int = 32            # latent side (H == W), in latent pixels
    patch_size: int = 2
    in_channels: int = 4            # latent channels; the model predicts a velocity of the same shape
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    cond_dim: Optional[int] = None  # width of the condition tokens; None -> hidden_size

    def __post_init__(self) -> None:
        if self.cond_dim is None:
            self.cond_dim = self.hidden_size
        problems = []
        if self.input_size % self.patch_size:
            problems.append(f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            problems.append(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.hidden_size % 4:
            problems.append(f"hidden_size {self.hidden_size} must be a multiple of 4 (2-D sin-cos position embedding)")
        for name in ("input_size", "patch_size", "in_channels", "hidden_size", "depth", "num_heads", "cond_dim"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("DiTConfig: " + "; ".join(problems))

    @property
    def grid_size(self) -> int:
        return self.input_size // self.patch_size

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DiTConfig: unknown field(s) {unknown} (known: {sorted(known)})")
        return cls(**data)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DiTConfig":
        if name not in DIT_PRESETS:
            raise ValueError(f"unknown DiT preset {name!r}; known: {', '.join(DIT_PRESETS)}")
        return cls.from_dict({**DIT_PRESETS[name], **overrides})


# ---- geometry: patches and positions --------------------------------------------------------------
def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, (H/p)*(W/p), p*p*C); tokens row-major, each token's features ordered (pi, pj, c)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, h, w, p, p, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: torch.Tensor, p: int, channels: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``patchify``: (B, h*w, p*p*C) with h, w in patches -> (B, C, h*p, w*p)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h, w, p, p, channels)
    x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(b, channels, h * p, w * p)


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """(N,) positions -> (N, dim): [sin(pos*w_k) | cos(pos*w_k)], w_k = 10000^(-k/(dim/2)), k < dim/2."""
    half = dim // 2
    omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float64) / half)  # (dim/2,)
    out = pos.to(torch.float64)[:, None] * omega[None]  # (N, dim/2)
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """(grid*grid, dim) fixed position embedding, tokens row-major as ``patchify`` orders them.

    As in DiT/MAE: the first dim/2 features encode the column (x), the last dim/2 the row (y)."""
    idx = torch.arange(grid_size * grid_size)
    row, col = idx // grid_size, idx % grid_size
    return torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1).float()


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """(B,) scalar times -> (B, dim) [cos | sin] features (DiT's TimestepEmbedder.timestep_embedding)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]  # (B, dim/2)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x (B, T, D); shift, scale (B, D)
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


# ---- modules ----------------------------------------------------------------------------------------
class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> (B, D). t is scaled by 1000 first so the sinusoid sees DiT's integer-step range."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(nn.Linear(frequency_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        freq = timestep_frequencies(t * 1000.0, self.frequency_size)  # (B, 256)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (B, D)


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention to it."""

    def __init__(self, dim: int, num_heads: int, context_dim: Optional[int] = None):
        super().__init__()
        self.num_heads = num_heads
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q = nn.Linear(dim, dim)
            self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)  # (B, h, N, d_h)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if context is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (B, T, D)
        else:
            q = self.q(x)  # (B, T, D)
            k, v = self.kv(context).chunk(2, dim=-1)  # each (B, K, D)
        attn_mask = None if mask is None else mask[:, None, None, :]  # (B, 1, 1, K) True = attend
        out = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask)
        out = out.transpose(1, 2).reshape(x.shape)  # (B, T, D)
        return self.proj(out)


class DiTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, cond_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = Attention(dim, num_heads, context_dim=cond_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, cond: torch.Tensor,
                cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        # x (B, T, D); c (B, D); cond (B, K, Dc)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        # no gate here: the zero-initialised output projection alone makes this branch start at zero
        x = x + self.cross_attn(self.norm_cross(x), cond, cond_mask)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)  # each (B, D)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, T, p*p*C)


class DiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d, p, c = config.hidden_size, config.patch_size, config.in_channels
        self.x_embedder = nn.Linear(p * p * c, d)  # == a stride-p conv on the patches
        self.t_embedder = TimestepEmbedder(d)
        self.pooled_embedder = nn.Sequential(nn.Linear(config.cond_dim, d), nn.SiLU(), nn.Linear(d, d))
        # fixed, derived from the config: not a parameter and not in the state dict
        self.register_buffer("pos_embed", sincos_2d(d, config.grid_size).unsqueeze(0), persistent=False)  # (1, T, D)
        self.blocks = nn.ModuleList(DiTBlock(d, config.num_heads, config.cond_dim, config.mlp_ratio)
                                    for _ in range(config.depth))
        self.final_layer = FinalLayer(d, p, c)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's init: xavier Linear layers, N(0, 0.02) timestep MLP, zero adaLN / final / cross-attn output."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for lin in (self.t_embedder.mlp[0], self.t_embedder.mlp[2]):
            nn.init.normal_(lin.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def embed_condition(self, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """(B,) times + (B, Dc) pooled condition -> (B, D) adaLN input."""
        return self.t_embedder(t) + self.pooled_embedder(pooled.to(self.pos_embed.dtype))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, pooled: torch.Tensor,
                cond_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        cfg = self.config
        b, ch, h, w = x.shape
        if ch != cfg.in_channels or h != cfg.input_size or w != cfg.input_size:
            raise ValueError(f"DiT: x has shape {tuple(x.shape)}, expected (B, {cfg.in_channels}, "
                             f"{cfg.input_size}, {cfg.input_size})")
        if cond.dim() != 3 or cond.shape[0] != b or cond.shape[-1] != cfg.cond_dim:
            raise ValueError(f"DiT: cond has shape {tuple(cond.shape)}, expected ({b}, K, {cfg.cond_dim})")
        if t.shape != (b,):
            raise ValueError(f"DiT: t has shape {tuple(t.shape)}, expected ({b},)")
        if cond_mask is not None and not bool(cond_mask.any(dim=1).all()):
            raise ValueError("DiT: cond_mask masks out every condition token of some sample")
        dtype = self.x_embedder.weight.dtype
        tokens = self.x_embedder(patchify(x.to(dtype), cfg.patch_size)) + self.pos_embed.to(dtype)  # (B, T, D)
        c = self.embed_condition(t, pooled)  # (B, D)
        cond = cond.to(dtype)
        for block in self.blocks:
            tokens = block(tokens, c, cond, cond_mask)
        out = self.final_layer(tokens, c)  # (B, T, p*p*C)
        g = cfg.grid_size
        return unpatchify(out, cfg.patch_size, cfg.in_channels, g, g)  # (B, C, H, W)

"""Latent spaces for the DiT head: pixel space (identity) or a diffusers AutoencoderKL.

    ae = build_autoencoder({"kind": "identity"})                                  # tiny / CPU
    ae = build_autoencoder({"kind": "diffusers", "path": "/models/sdxl-vae", "family": "sdxl"})
    ae = build_autoencoder({"kind": "diffusers", "config": {...AutoencoderKL kwargs...}, "family": "sd3"})
    z = ae.encode(images)          # images (B, 3, H, W) in [0, 1] -> (B, latent_channels, H/ds, W/ds)
    images = ae.decode(z)          # back to [0, 1] (not clamped)

The diffusers latent is normalised like its pipelines do: latent = (z - shift_factor) * scaling_factor, with
the factors of the VAE family (``VAE_FACTORS``) unless given explicitly. Autoencoders are frozen: encode and
decode run without gradients, and none of their parameters ever receive one.
diffusers is an optional extra and is imported only when a diffusers autoencoder is built.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

# family -> (scaling_factor, shift_factor, latent_channels). sd/sdxl/flux match the values listed in
# diffusers' utils/remote_utils.py; sd3 is the stabilityai/stable-diffusion-3 vae/config.json.
VAE_FACTORS: Dict[str, Dict[str, float]] = {
    "sd": {"scale": 0.18215, "shift": 0.0, "latent_channels": 4},
    "sdxl": {"scale": 0.13025, "shift": 0.0, "latent_channels": 4},
    "sd3": {"scale": 1.5305, "shift": 0.0609, "latent_channels": 16},
    "flux": {"scale": 0.3611, "shift": 0.1159, "latent_channels": 16},
}


class IdentityAutoencoder(nn.Module):
    """Pixel space: [0, 1] images <-> [-1, 1] "latents" of the same shape. No parameters."""

    downsample = 1

    def __init__(self, channels: int = 3):
        super().__init__()
        self.latent_channels = channels

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return images * 2 - 1

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents + 1) / 2

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": "identity", "channels": self.latent_channels}


class DiffusersAutoencoder(nn.Module):
    """A frozen diffusers ``AutoencoderKL`` with its family's latent scale/shift.

    ``sample_posterior=False`` (default) encodes to the posterior mean, which makes encoding deterministic."""

    def __init__(self, vae, *, family: Optional[str] = None, scale: Optional[float] = None,
                 shift: Optional[float] = None, sample_posterior: bool = False, source: Optional[dict] = None):
        super().__init__()
        if family is not None and family not in VAE_FACTORS:
            raise ValueError(f"unknown VAE family {family!r}; known: {', '.join(VAE_FACTORS)}")
        factors = VAE_FACTORS.get(family, {})
        # explicit values win, then the family's, then what the VAE's own config says
        self.scale = float(scale if scale is not None else factors.get("scale", vae.config.scaling_factor))
        self.shift = float(shift if shift is not None else factors.get("shift", vae.config.shift_factor or 0.0))
        self.family = family
        self.sample_posterior = sample_posterior
        self.vae = vae.eval().requires_grad_(False)
        self.latent_channels = int(vae.config.latent_channels)
        self.downsample = 2 ** (len(vae.config.block_out_channels) - 1)
        self._source = dict(source or {})

    def train(self, mode: bool = True) -> "DiffusersAutoencoder":
        super().train(mode)
        self.vae.eval()  # frozen: keep it in eval mode whatever the head does
        return self

    @torch.no_grad()
    def encode(self, images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        x = (images * 2 - 1).to(self.vae.dtype)  # (B, 3, H, W) in [-1, 1]
        dist = self.vae.encode(x).latent_dist
        z = dist.sample(generator) if self.sample_posterior else dist.mode()  # (B, c, H/ds, W/ds)
        return ((z - self.shift) * self.scale).float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.vae.dtype) / self.scale + self.shift
        x = self.vae.decode(z).sample  # (B, 3, H, W) in ~[-1, 1]
        return ((x + 1) / 2).float()

    def to_dict(self) -> Dict[str, Any]:
        return {**self._source, "kind": "diffusers", "family": self.family, "scale": self.scale,
                "shift": self.shift, "sample_posterior": self.sample_posterior}


def build_autoencoder(cfg: Optional[Dict[str, Any]] = None) -> nn.Module:
    """{"kind": "identity" | "diffusers", ...} -> an autoencoder (None or {} -> identity)."""
    cfg = dict(cfg or {"kind": "identity"})
    kind = cfg.pop("kind", "identity")
    if kind == "identity":
        unknown = sorted(set(cfg) - {"channels"})
        if unknown:
            raise ValueError(f"autoencoder 'identity': unknown field(s) {unknown} (known: ['channels'])")
        return IdentityAutoencoder(int(cfg.get("channels", 3)))
    if kind == "diffusers":
        known = {"path", "subfolder", "config", "family", "scale", "shift", "sample_posterior"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"autoencoder 'diffusers': unknown field(s) {unknown} (known: {sorted(known)})")
        path, config = cfg.get("path"), cfg.get("config")
        if (path is None) == (config is None):
            raise ValueError("autoencoder 'diffusers': give exactly one of 'path' (a local AutoencoderKL "
                             "directory or hub id) and 'config' (AutoencoderKL keyword arguments)")
        try:
            from diffusers import AutoencoderKL
        except ImportError as e:
            raise ImportError("autoencoder 'diffusers' needs the diffusers package "
                              "(pip install 'mllm[gen]' or pip install diffusers)") from e
        if path is not None:
            try:
                vae = AutoencoderKL.from_pretrained(path, subfolder=cfg.get("subfolder"))
            except OSError as e:
                raise ValueError(f"autoencoder 'diffusers': cannot load AutoencoderKL from {path!r}: {e}") from None
        else:
            vae = AutoencoderKL(**config)
        source = {k: cfg[k] for k in ("path", "subfolder", "config") if cfg.get(k) is not None}
        return DiffusersAutoencoder(vae, family=cfg.get("family"), scale=cfg.get("scale"), shift=cfg.get("shift"),
                                    sample_posterior=bool(cfg.get("sample_posterior", False)), source=source)
    raise ValueError(f"unknown autoencoder kind {kind!r}; known: identity, diffusers")

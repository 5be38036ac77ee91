"""The image-generation head of an exported mllm model (``config.extra_heads["gen"]``): MetaQuery queries run
through the decoder LLM -> connector -> DiT, sampled by rectified-flow Euler steps with classifier-free guidance.

Written by ``mllm export`` beside ``modeling_mllm.py`` together with ``dit.py``, ``flow.py`` and ``condition.py``,
which are mllm's own files copied verbatim (torch only): the condition and the sampler are mllm's own code.
Parameter names equal mllm's ``GenHead`` (``queries``, ``connector.*``, ``refiner.*``, ``null_cond``,
``null_pooled``, ``dit.*``, ``autoencoder.vae.*`` for a diffusers VAE), so the export is a rename of the
``gen_head.`` prefix only: the same seed and noise give the same pixels as ``MultimodalLM.generate_images``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .condition import PromptConditioning, condition_config
from .dit import DiT, DiTConfig, sincos_2d

try:  # optional: only heads with a diffusers VAE need it
    from diffusers import AutoencoderKL
except ImportError:
    AutoencoderKL = None


@torch.no_grad()
def restore_pos_embed(dit: DiT) -> None:
    """Rebuild the DiT's fixed 2-D sin-cos table: it is derived from the config, not stored, and transformers
    leaves such non-persistent buffers empty when it builds the model on the meta device."""
    table = sincos_2d(dit.config.hidden_size, dit.config.grid_size).unsqueeze(0)  # (1, T, D)
    dit.pos_embed.copy_(table.to(device=dit.pos_embed.device, dtype=dit.pos_embed.dtype))


class PixelSpace(nn.Module):
    """[0, 1] images <-> [-1, 1] latents of the same shape."""

    def __init__(self, channels: int = 3):
        super().__init__()
        self.latent_channels = channels

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents + 1) / 2


class DiffusersLatents(nn.Module):
    """A diffusers AutoencoderKL rebuilt from its config (weights from the checkpoint); latent = (z - shift) * scale."""

    def __init__(self, cfg: Dict[str, Any]):
        super().__init__()
        if AutoencoderKL is None:
            raise ImportError("this model's generation head decodes with a diffusers VAE: pip install diffusers")
        self.vae = AutoencoderKL.from_config(cfg["vae_config"])
        self.scale, self.shift = float(cfg["scale"]), float(cfg["shift"])
        self.latent_channels = int(self.vae.config.latent_channels)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.vae.dtype) / self.scale + self.shift
        x = self.vae.decode(z).sample  # (B, 3, H, W) in ~[-1, 1]
        return ((x + 1) / 2).float()


class MllmGenHead(PromptConditioning):
    def __init__(self, cfg: Dict[str, Any], llm_hidden_size: int):
        super().__init__()
        self.t_shift = float(cfg.get("t_shift", 1.0))
        self.dit_config = DiTConfig.from_dict(dict(cfg["dit"]))
        ae = cfg.get("autoencoder") or {"kind": "identity"}
        if ae["kind"] == "identity":
            self.autoencoder = PixelSpace(int(ae.get("channels", 3)))
        elif ae["kind"] == "diffusers":
            self.autoencoder = DiffusersLatents(ae)
        else:
            raise ValueError(f"unknown autoencoder kind {ae['kind']!r}; known: identity, diffusers")
        self.init_conditioning(condition_config(cfg), llm_hidden_size, self.dit_config.cond_dim)
        self.dit = DiT(self.dit_config)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        c = self.dit_config
        return c.in_channels, c.input_size, c.input_size

    @torch.no_grad()
    def sample(self, language_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               steps: int, cfg_scale: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        cond, mask, pooled = self.encode_prompt(language_model, input_ids, attention_mask)
        b = cond.shape[0]
        gen_device = generator.device if generator is not None else cond.device
        noise = torch.randn((b, *self.latent_shape), generator=generator, device=gen_device).to(cond.device)
        latents = self.sample_latents(self.dit, noise, cond, mask, pooled, steps=steps, cfg_scale=cfg_scale,
                                      shift=self.t_shift)
        return self.autoencoder.decode(latents).clamp(0, 1)

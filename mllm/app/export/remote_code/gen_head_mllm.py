"""The image-generation head of an exported mllm model (``config.extra_heads["gen"]``): MetaQuery queries run
through the decoder LLM -> connector -> DiT, sampled by rectified-flow Euler steps with classifier-free guidance.

Written by ``mllm export`` beside ``modeling_mllm.py`` together with ``dit.py`` and ``flow.py``, which are
mllm's own files copied verbatim (torch only). Parameter names equal mllm's ``GenHead`` (``queries``,
``connector.{0,1,3}``, ``null_cond``, ``null_pooled``, ``dit.*``, ``autoencoder.vae.*`` for a diffusers VAE), so
the export is a rename of the ``gen_head.`` prefix only, and the arithmetic below follows ``GenHead`` op for op:
the same seed and noise give the same pixels as ``MultimodalLM.generate_images``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from .dit import DiT, DiTConfig, sincos_2d
from .flow import euler_sample, guidance

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


class MllmGenHead(nn.Module):
    def __init__(self, cfg: Dict[str, Any], llm_hidden_size: int):
        super().__init__()
        self.num_queries = int(cfg["num_queries"])
        self.t_shift = float(cfg.get("t_shift", 1.0))
        self.dit_config = DiTConfig.from_dict(dict(cfg["dit"]))
        ae = cfg.get("autoencoder") or {"kind": "identity"}
        if ae["kind"] == "identity":
            self.autoencoder = PixelSpace(int(ae.get("channels", 3)))
        elif ae["kind"] == "diffusers":
            self.autoencoder = DiffusersLatents(ae)
        else:
            raise ValueError(f"unknown autoencoder kind {ae['kind']!r}; known: identity, diffusers")
        k, d = self.num_queries, self.dit_config.cond_dim
        self.queries = nn.Parameter(torch.zeros(k, llm_hidden_size))  # (K, H)
        self.connector = nn.Sequential(nn.LayerNorm(llm_hidden_size), nn.Linear(llm_hidden_size, d), nn.GELU(),
                                       nn.Linear(d, d))
        self.null_cond = nn.Parameter(torch.zeros(k, d))
        self.null_pooled = nn.Parameter(torch.zeros(d))
        self.dit = DiT(self.dit_config)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        c = self.dit_config
        return c.in_channels, c.input_size, c.input_size

    def encode_prompt(self, language_model: nn.Module, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """LEFT-padded prompts (B, L) -> cond (B, K, D), pooled (B, D)."""
        if input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate_images: prompts must be LEFT-padded (the queries follow the last prompt token)")
        embeds = language_model.get_input_embeddings()(input_ids)  # (B, L, H)
        b, k = input_ids.shape[0], self.num_queries
        queries = self.queries.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, K, H)
        embeds = torch.cat([embeds, queries], dim=1)  # (B, L+K, H)
        mask = torch.cat([attention_mask.to(torch.long),
                          attention_mask.new_ones(b, k, dtype=torch.long)], dim=1)  # (B, L+K)
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # real tokens only: padding does not move queries
        out = language_model.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                           use_cache=False)
        hidden = out.last_hidden_state[:, -k:]  # (B, K, H)
        cond = self.connector(hidden.to(self.queries.dtype))  # (B, K, D)
        return cond, cond.mean(dim=1)

    @torch.no_grad()
    def sample(self, language_model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               steps: int, cfg_scale: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        cond, pooled = self.encode_prompt(language_model, input_ids, attention_mask)
        b = cond.shape[0]
        gen_device = generator.device if generator is not None else cond.device
        noise = torch.randn((b, *self.latent_shape), generator=generator, device=gen_device).to(cond.device)
        if cfg_scale == 1.0:
            def velocity(x, t):
                return self.dit(x, t, cond, pooled)
        else:
            null_cond = self.null_cond.unsqueeze(0).expand(b, -1, -1)
            null_pooled = self.null_pooled.unsqueeze(0).expand(b, -1)
            cond2 = torch.cat([cond, null_cond.to(cond.dtype)])  # (2B, K, D)
            pooled2 = torch.cat([pooled, null_pooled.to(pooled.dtype)])  # (2B, D)

            def velocity(x, t):
                v_c, v_u = self.dit(torch.cat([x, x]), torch.cat([t, t]), cond2, pooled2).chunk(2)
                return guidance(v_c, v_u, cfg_scale)
        latents = euler_sample(velocity, noise, steps=steps, shift=self.t_shift)
        return self.autoencoder.decode(latents).clamp(0, 1)

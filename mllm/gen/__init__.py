"""Image generation head: DiT + rectified flow, conditioned on a frozen multimodal LLM (MetaQuery).

    from mllm.gen import GenHead, GenHeadConfig
    head = GenHead(GenHeadConfig(dit="tiny"), llm_hidden_size=model.llm.config.hidden_size)

``dit.py`` and ``flow.py`` depend on torch only (the remote-code export copies them verbatim);
``autoencoder.py`` imports diffusers only when a diffusers VAE is requested.
"""
from __future__ import annotations

from .autoencoder import VAE_FACTORS, DiffusersAutoencoder, IdentityAutoencoder, build_autoencoder
from .dit import DIT_PRESETS, DiT, DiTConfig
from .flow import euler_sample, guidance, interpolate, rectified_flow_loss, sample_timesteps, shift_timesteps
from .head import GenHead, GenHeadConfig

__all__ = [
    "DIT_PRESETS", "DiT", "DiTConfig",
    "sample_timesteps", "shift_timesteps", "interpolate", "rectified_flow_loss", "guidance", "euler_sample",
    "IdentityAutoencoder", "DiffusersAutoencoder", "VAE_FACTORS", "build_autoencoder",
    "GenHead", "GenHeadConfig",
]

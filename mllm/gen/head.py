"""GenHead: MetaQuery conditioning through a frozen multimodal LLM -> connector -> DiT, trained by rectified flow.

    head = GenHead(GenHeadConfig(num_queries=16, dit="tiny"), llm_hidden_size=model.llm.config.hidden_size)
    loss = head.loss(model, input_ids, attention_mask, images)            # images (B, 3, H, W) in [0, 1]
    images = head.sample(model, input_ids, attention_mask, steps=20, cfg_scale=3.0)

``model`` is a ``mllm.model.MultimodalLM``; prompt ids are LEFT-padded. K learnable query embeddings are
appended after the prompt and run through the LLM's base decoder; the last K final hidden states go through
the connector and become the DiT's cross-attention tokens ``cond`` (B, K, D), and their mean ``pooled``
(B, D) is added to the timestep embedding. The LLM is only read: nothing here changes it, and when its
parameters are frozen the gradient still reaches the queries through its activations.
For classifier-free guidance the condition is replaced per sample by the learned ``null_cond`` /
``null_pooled`` with probability ``cfg_dropout`` in training; sampling runs conditional and null in one
batch of 2B.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .autoencoder import build_autoencoder
from .dit import DIT_PRESETS, DiT, DiTConfig
from .flow import euler_sample, guidance, rectified_flow_loss


def _resolve_dit(dit: Union[str, Dict[str, Any], DiTConfig]) -> DiTConfig:
    """A preset name, {"preset": name, **overrides}, a full DiTConfig dict, or a DiTConfig."""
    if isinstance(dit, DiTConfig):
        return dit
    if isinstance(dit, str):
        return DiTConfig.preset(dit)
    if isinstance(dit, dict):
        dit = dict(dit)
        name = dit.pop("preset", None)
        return DiTConfig.preset(name, **dit) if name is not None else DiTConfig.from_dict(dit)
    raise ValueError(f"GenHeadConfig.dit: expected a preset name ({', '.join(DIT_PRESETS)}), a dict or a "
                     f"DiTConfig, got {type(dit).__name__}")


@dataclass
class GenHeadConfig:
    num_queries: int = 16
    dit: Any = "tiny"                      # resolved to a DiTConfig (see _resolve_dit)
    autoencoder: Dict[str, Any] = field(default_factory=lambda: {"kind": "identity"})
    image_size: int = 48                   # generated images are image_size x image_size RGB
    cfg_dropout: float = 0.1
    t_mean: float = 0.0                    # logit-normal timestep distribution
    t_std: float = 1.0
    t_shift: float = 1.0                   # SD3 shift, in training and in the sampling schedule

    def __post_init__(self) -> None:
        self.dit = _resolve_dit(self.dit)
        if self.num_queries < 1:
            raise ValueError(f"GenHeadConfig.num_queries must be >= 1, got {self.num_queries}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"GenHeadConfig.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.t_std <= 0 or self.t_shift <= 0:
            raise ValueError(f"GenHeadConfig: t_std and t_shift must be > 0, got {self.t_std}, {self.t_shift}")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)  # nested DiTConfig -> dict
        d["autoencoder"] = dict(self.autoencoder)
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "GenHeadConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"gen_head: unknown field(s) {unknown} (known: {sorted(known)})")
        return cls(**data)


def _base_decoder(llm: nn.Module) -> nn.Module:
    """The causal LM's transformer body (no LM head), also through a peft wrapper."""
    if hasattr(llm, "get_base_model"):
        llm = llm.get_base_model()
    return llm.get_decoder()


class GenHead(nn.Module):
    def __init__(self, cfg: Union[GenHeadConfig, Dict[str, Any]], llm_hidden_size: int):
        super().__init__()
        if isinstance(cfg, dict):
            cfg = GenHeadConfig.from_dict(cfg)
        self.config = cfg
        dcfg = cfg.dit
        self.autoencoder = build_autoencoder(cfg.autoencoder)
        side, ds = cfg.image_size, self.autoencoder.downsample
        if side % ds or side // ds != dcfg.input_size or self.autoencoder.latent_channels != dcfg.in_channels:
            raise ValueError(f"gen_head: image_size {side} through the autoencoder gives latents "
                             f"({self.autoencoder.latent_channels}, {side / ds:g}, {side / ds:g}) but the DiT takes "
                             f"({dcfg.in_channels}, {dcfg.input_size}, {dcfg.input_size}); fix dit.input_size/"
                             f"in_channels or image_size")
        k, d = cfg.num_queries, dcfg.cond_dim
        self.queries = nn.Parameter(torch.randn(k, llm_hidden_size) * 0.02)  # (K, H): LLM-embedding scale
        self.connector = nn.Sequential(nn.LayerNorm(llm_hidden_size), nn.Linear(llm_hidden_size, d), nn.GELU(),
                                       nn.Linear(d, d))
        self.null_cond = nn.Parameter(torch.zeros(k, d))
        self.null_pooled = nn.Parameter(torch.zeros(d))
        self.dit = DiT(dcfg)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        c = self.config.dit
        return c.in_channels, c.input_size, c.input_size

    # ---- conditioning -----------------------------------------------------------------------------
    def encode_prompt(self, model, input_ids: torch.Tensor,
                      attention_mask: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """LEFT-padded prompts (B, L) -> cond (B, K, D), pooled (B, D)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if input_ids.shape[0] > 1 and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("GenHead.encode_prompt: prompts must be LEFT-padded (the queries follow the last "
                             "prompt token); some rows end in padding")
        llm = model.llm
        embeds = llm.get_input_embeddings()(input_ids)  # (B, L, H)
        b, k = input_ids.shape[0], self.config.num_queries
        queries = self.queries.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)  # (B, K, H)
        embeds = torch.cat([embeds, queries], dim=1)  # (B, L+K, H)
        mask = torch.cat([attention_mask.to(torch.long),
                          attention_mask.new_ones(b, k, dtype=torch.long)], dim=1)  # (B, L+K)
        # positions count real tokens only, so left padding does not move the queries
        position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)  # (B, L+K)
        out = _base_decoder(llm)(inputs_embeds=embeds, attention_mask=mask, position_ids=position_ids,
                                 use_cache=False)
        hidden = out.last_hidden_state[:, -k:]  # (B, K, H), after the final norm
        cond = self.connector(hidden.to(self.queries.dtype))  # (B, K, D)
        return cond, cond.mean(dim=1)  # pooled (B, D)

    def null_condition(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """The learned "no prompt" condition: (B, K, D), (B, D)."""
        return (self.null_cond.unsqueeze(0).expand(batch, -1, -1),
                self.null_pooled.unsqueeze(0).expand(batch, -1))

    def drop_condition(self, cond: torch.Tensor, pooled: torch.Tensor,
                       generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Replace each sample's condition by the null one with probability cfg_dropout."""
        b = cond.shape[0]
        gen_device = generator.device if generator is not None else cond.device
        drop = (torch.rand(b, generator=generator, device=gen_device) < self.config.cfg_dropout).to(cond.device)
        null_cond, null_pooled = self.null_condition(b)
        cond = torch.where(drop[:, None, None], null_cond.to(cond.dtype), cond)
        pooled = torch.where(drop[:, None], null_pooled.to(pooled.dtype), pooled)
        return cond, pooled

    # ---- training ---------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"GenHead: images have shape {tuple(images.shape)}, expected (B, 3, {s}, {s}) "
                             f"with values in [0, 1]")

    def loss(self, model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], images: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Rectified-flow loss (a scalar) of the DiT conditioned on the prompts."""
        self._check_images(images)
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"GenHead.loss: {images.shape[0]} images for {input_ids.shape[0]} prompts")
        cond, pooled = self.encode_prompt(model, input_ids, attention_mask)
        if self.training and self.config.cfg_dropout > 0:
            cond, pooled = self.drop_condition(cond, pooled, generator)
        x0 = self.autoencoder.encode(images.to(cond.device), generator=generator)  # (B, C, h, w)
        c = self.config
        return rectified_flow_loss(lambda x, t: self.dit(x, t, cond, pooled), x0, generator=generator,
                                   mean=c.t_mean, std=c.t_std, shift=c.t_shift)

    # ---- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
               steps: int = 20, cfg_scale: float = 3.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images (B, 3, image_size, image_size) in [0, 1] for the prompts."""
        cond, pooled = self.encode_prompt(model, input_ids, attention_mask)
        b = cond.shape[0]
        gen_device = generator.device if generator is not None else cond.device
        noise = torch.randn((b, *self.latent_shape), generator=generator, device=gen_device).to(cond.device)
        if cfg_scale == 1.0:
            def velocity(x, t):
                return self.dit(x, t, cond, pooled)
        else:
            null_cond, null_pooled = self.null_condition(b)
            cond2 = torch.cat([cond, null_cond.to(cond.dtype)])  # (2B, K, D)
            pooled2 = torch.cat([pooled, null_pooled.to(pooled.dtype)])  # (2B, D)

            def velocity(x, t):
                v_c, v_u = self.dit(torch.cat([x, x]), torch.cat([t, t]), cond2, pooled2).chunk(2)
                return guidance(v_c, v_u, cfg_scale)
        latents = euler_sample(velocity, noise, steps=steps, shift=self.config.t_shift)
        return self.autoencoder.decode(latents).clamp(0, 1)

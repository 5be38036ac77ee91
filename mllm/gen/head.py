"""GenHead: the prompt read by a frozen multimodal LLM -> a gen connector -> DiT, trained by rectified flow.

    head = GenHead(GenHeadConfig(dit="tiny"), llm_hidden_size=model.llm.config.hidden_size)
    loss = head.loss(model, input_ids, attention_mask, images)            # images (B, 3, H, W) in [0, 1]
    images = head.sample(model, input_ids, attention_mask, steps=20, cfg_scale=3.0)

``model`` is a ``mllm.model.MultimodalLM``; prompt ids are LEFT-padded. The condition (``condition.py``) is
read from the LLM's base decoder: the prompt tokens' own states and/or K learned queries appended after the
prompt (MetaQuery), from one or several hidden-state layers (0 = the input embeddings), through an MLP and
optional trainable transformer layers; the DiT cross-attends to those tokens (padding masked) and adds their
mean to its timestep embedding. The LLM is only read: nothing here changes it, and when its parameters are
frozen the gradient still reaches the queries through its activations.
For classifier-free guidance the condition is replaced per sample by the learned ``null_cond`` /
``null_pooled`` with probability ``cfg_dropout`` in training; sampling runs conditional and null in one
batch of 2B.

The defaults were chosen by measurement on the Shapes world (``benchmarks/gen_conditioning.py``): through a
tiny LLM that knows little language, the prompt tokens' states beside the input embeddings, bound by two
refiner layers, carry the prompt; K queries at the last layer alone do not. An SD3 shift of 2 (more training
and sampling near noise, where which shape gets which colour is decided) is what makes two-shape prompts
come out right.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from .autoencoder import build_autoencoder
from .condition import LEGACY_CONDITION, PromptConditioning, check_condition, condition_config
from .dit import DIT_PRESETS, DiT, DiTConfig
from .flow import TIME_SAMPLINGS, rectified_flow_loss


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
    # conditioning (mllm.gen.condition): which LLM states, and how they reach the DiT
    condition: str = "prompt"              # "queries" | "prompt" | "prompt+queries"
    num_queries: int = 16                  # K learned queries (condition with "queries")
    llm_layers: List[int] = field(default_factory=lambda: [0, -1])   # hidden-state indices; 0 = input embeddings
    refiner_layers: int = 2                # trainable transformer layers over the condition tokens
    prediction: str = "x0"                 # what the DiT predicts: "velocity" | "x0"
    pooled: str = "mean"                   # the DiT's global (adaLN) condition: "mean" of the tokens | "none"
    t_sampling: str = "logit_normal"       # training times: "logit_normal" | "uniform"
    dit: Any = "tiny"                      # resolved to a DiTConfig (see _resolve_dit)
    autoencoder: Dict[str, Any] = field(default_factory=lambda: {"kind": "identity"})
    image_size: int = 48                   # generated images are image_size x image_size RGB
    cfg_dropout: float = 0.1
    t_mean: float = 0.0                    # logit-normal timestep distribution
    t_std: float = 1.0
    # SD3 shift, in training and in the sampling schedule: 2 spends more of both near noise, where the layout and
    # which shape gets which colour are decided (benchmarks/gen_conditioning.py: everything the prompt says
    # 0.38 -> 0.96 on the Shapes head)
    t_shift: float = 2.0

    def __post_init__(self) -> None:
        self.dit = _resolve_dit(self.dit)
        if self.num_queries < 1:
            raise ValueError(f"GenHeadConfig.num_queries must be >= 1, got {self.num_queries}")
        if not 0.0 <= self.cfg_dropout < 1.0:
            raise ValueError(f"GenHeadConfig.cfg_dropout must be in [0, 1), got {self.cfg_dropout}")
        if self.t_std <= 0 or self.t_shift <= 0:
            raise ValueError(f"GenHeadConfig: t_std and t_shift must be > 0, got {self.t_std}, {self.t_shift}")
        if self.t_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"GenHeadConfig.t_sampling {self.t_sampling!r} is not one of {', '.join(TIME_SAMPLINGS)}")
        self.llm_layers = list(self.llm_layers) if isinstance(self.llm_layers, (list, tuple)) else self.llm_layers
        check_condition(condition_config(self), "GenHeadConfig")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)  # nested DiTConfig -> dict
        d["autoencoder"] = dict(self.autoencoder)
        return d

    @classmethod
    def from_dict(cls, data: Dict[str, Any], *, saved: bool = False) -> "GenHeadConfig":
        """A config from its dict. ``saved``: the dict was written by a checkpoint (``mllm_config.json``), which
        lists every field its mllm version had, so a missing conditioning field predates that option and means
        what that version did (``LEGACY_CONDITION``: last-layer queries, v-prediction), not today's default."""
        if isinstance(data, GenHeadConfig):
            return data
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"gen_head: unknown field(s) {unknown} (known: {sorted(known)})")
        if saved:
            data = {**LEGACY_CONDITION, "t_sampling": "logit_normal", **data}
        return cls(**data)


class GenHead(PromptConditioning):
    def __init__(self, cfg: Union[GenHeadConfig, Dict[str, Any]], llm_hidden_size: int,
                 llm_num_layers: Optional[int] = None):
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
        if llm_num_layers is not None:
            bad = [i for i in cfg.llm_layers if not -(llm_num_layers + 1) <= i <= llm_num_layers]
            if bad:
                raise ValueError(f"gen_head.llm_layers {bad} out of range: the LLM has {llm_num_layers} layers "
                                 f"(hidden-state indices 0..{llm_num_layers}, or negative from the end)")
        self.init_conditioning(condition_config(cfg), llm_hidden_size, dcfg.cond_dim)
        self.dit = DiT(dcfg)

    @property
    def latent_shape(self) -> Tuple[int, int, int]:
        c = self.config.dit
        return c.in_channels, c.input_size, c.input_size

    # ---- training ---------------------------------------------------------------------------------
    def _check_images(self, images: torch.Tensor) -> None:
        s = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"GenHead: images have shape {tuple(images.shape)}, expected (B, 3, {s}, {s}) "
                             f"with values in [0, 1]")

    def loss(self, model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], images: torch.Tensor,
             generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Flow-matching loss (a scalar) of the DiT conditioned on the prompts."""
        self._check_images(images)
        if images.shape[0] != input_ids.shape[0]:
            raise ValueError(f"GenHead.loss: {images.shape[0]} images for {input_ids.shape[0]} prompts")
        cond, mask, pooled = self.encode_prompt(model.llm, input_ids, attention_mask)
        c = self.config
        if self.training and c.cfg_dropout > 0:
            cond, mask, pooled = self.drop_condition(cond, mask, pooled, c.cfg_dropout, generator)
        x0 = self.autoencoder.encode(images.to(cond.device), generator=generator)  # (B, C, h, w)
        return rectified_flow_loss(lambda x, t: self.dit(x, t, cond, pooled, mask), x0, generator=generator,
                                   prediction=c.prediction, mean=c.t_mean, std=c.t_std, shift=c.t_shift,
                                   sampling=c.t_sampling)

    # ---- sampling ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, model, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, *,
               steps: int = 10, cfg_scale: float = 1.5, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Images (B, 3, image_size, image_size) in [0, 1] for the prompts."""
        cond, mask, pooled = self.encode_prompt(model.llm, input_ids, attention_mask)
        b = cond.shape[0]
        gen_device = generator.device if generator is not None else cond.device
        noise = torch.randn((b, *self.latent_shape), generator=generator, device=gen_device).to(cond.device)
        latents = self.sample_latents(self.dit, noise, cond, mask, pooled, steps=steps, cfg_scale=cfg_scale,
                                      shift=self.config.t_shift)
        return self.autoencoder.decode(latents).clamp(0, 1)

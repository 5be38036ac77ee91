"""LLaVA-1.5's projector: Linear -> GELU -> Linear, applied to every patch token independently."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import ConnectorConfig

from .registry import CONNECTORS
from .base import Connector


class MLPConnector(Connector):
    preserves_grid = True

    def __init__(self, in_dim: int, out_dim: int, output_std: Optional[float] = None):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        # names follow transformers' LlavaMultiModalProjector so export is a key rename, not a reshape
        self.linear_1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(out_dim, out_dim)
        if output_std is not None:
            self._scale_output(float(output_std))

    @torch.no_grad()
    def _scale_output(self, std: float) -> None:
        """linear_2 ~ N(0, s^2) with s chosen so that unit-variance input features come out with ~``std`` per
        coordinate: s = std / sqrt(out_dim * E[h^2]), E[h^2] of the GELU hidden layer measured on Gaussian
        input (a private generator, so the global RNG stream is untouched)."""
        g = torch.Generator().manual_seed(0)
        x = torch.randn(512, self.in_dim, generator=g, dtype=self.linear_1.weight.dtype)
        ms = float(self.act(self.linear_1(x)).pow(2).mean())
        self.linear_2.weight.normal_(0.0, std / (self.out_dim * max(ms, 1e-12)) ** 0.5)
        self.linear_2.bias.zero_()

    def num_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (N, T, in_dim) -> (N, T, out_dim)
        return self.linear_2(self.act(self.linear_1(features)))


@CONNECTORS.register("mlp2x_gelu")
def _build(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> MLPConnector:
    return MLPConnector(in_dim, out_dim, output_std=cfg.output_std)

"""LLaVA-1.5's projector: Linear -> GELU -> Linear, applied to every patch token independently."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from mllm.config import ConnectorConfig

from . import CONNECTORS
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
            # hidden activations are O(1) per coordinate: w ~ N(0, std^2 / out_dim) gives outputs of ~std
            nn.init.normal_(self.linear_2.weight, std=float(output_std) / out_dim ** 0.5)
            nn.init.zeros_(self.linear_2.bias)

    def num_tokens(self, num_input_tokens: int) -> int:
        return num_input_tokens

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (N, T, in_dim) -> (N, T, out_dim)
        return self.linear_2(self.act(self.linear_1(features)))


@CONNECTORS.register("mlp2x_gelu")
def _build(cfg: ConnectorConfig, in_dim: int, out_dim: int) -> MLPConnector:
    return MLPConnector(in_dim, out_dim, output_std=cfg.output_std)

"""The one interface every connector implements: vision features in, LLM-space tokens out."""
from __future__ import annotations

import torch
from torch import nn


class Connector(nn.Module):
    """forward(features (N, T_in, in_dim)) -> (N, T_out, out_dim), one row per tile.

    in_dim          channels of the vision features it takes
    out_dim         the LLM's hidden size
    preserves_grid  True when output token t is input token t (MLP): the AnyRes unpad/newline packing
                    then applies to its output; False when the output tokens are not spatial (Q-Former)
    num_tokens(n)   output tokens per tile given n input tokens per tile
    """

    in_dim: int
    out_dim: int
    preserves_grid: bool

    def num_tokens(self, num_input_tokens: int) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

"""The one interface every vision tower implements (HF CLIP, HF SigLIP, open_clip, ...)."""
from __future__ import annotations

from typing import Tuple

import torch
from torch import nn


class VisionTower(nn.Module):
    """Maps tiles to patch features.

    forward(pixel_values (N, 3, S, S)) -> features (N, num_tokens, hidden_size), already reduced to the
    configured feature layer(s) (concatenated on channels when several) and select strategy
    ("default" drops the CLS token, "full" keeps every token).

    Attributes every tower sets:
      image_size   S, the square tile size it expects
      patch_size   P; the patch grid is (S // P) x (S // P)
      hidden_size  channels of the returned features (x number of concatenated layers)
      has_cls      whether the backbone prepends a CLS token
      num_tokens   tokens returned per tile: (S // P) ** 2, + 1 when has_cls and strategy is "full"
      image_mean, image_std   normalisation the tower was trained with (RGB, 0-1 scale)
    """

    image_size: int
    patch_size: int
    hidden_size: int
    has_cls: bool
    select_strategy: str
    image_mean: Tuple[float, float, float]
    image_std: Tuple[float, float, float]

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        extra = 1 if (self.has_cls and self.select_strategy == "full") else 0
        return self.grid_size ** 2 + extra

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

"""How many LLM tokens an image becomes, and how tile features are packed into them.

One object, built from the model (``model.geometry``), answers the question for both sides: the data
pipeline reserves ``geometry.num_image_tokens(hw)`` ``<image>`` positions, and the model packs exactly that
many features with ``geometry.pack(...)``. Both delegate the maths to ``mllm.anyres``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import torch

from . import anyres


@dataclass(frozen=True)
class ImageGeometry:
    tile_size: int
    patch_size: int
    has_cls: bool
    select_strategy: str
    grid_pinpoints: Tuple[Tuple[int, int], ...]  # empty: fixed resolution, one tile
    image_newline: bool
    # tokens per tile for connectors that do not keep the patch grid (Q-Former); None when they do
    queries_per_tile: Optional[int] = None

    @property
    def pinpoints(self) -> List[List[int]]:
        return [list(p) for p in self.grid_pinpoints]

    def num_tiles(self, image_hw: Sequence[int]) -> int:
        return anyres.num_tiles(tuple(image_hw), self.pinpoints, self.tile_size)

    def num_image_tokens(self, image_hw: Sequence[int]) -> int:
        if self.queries_per_tile is not None:
            return self.num_tiles(image_hw) * self.queries_per_tile
        return anyres.num_image_tokens(tuple(image_hw), self.pinpoints, self.tile_size, self.patch_size,
                                       self.select_strategy, has_cls=self.has_cls,
                                       image_newline=self.image_newline)

    def pack(self, tile_features: torch.Tensor, image_hw: Sequence[int],
             image_newline: Optional[torch.Tensor]) -> torch.Tensor:
        """(T, t, D) connector output for one image's T tiles -> (num_image_tokens, D)."""
        if self.queries_per_tile is not None:
            return tile_features.reshape(-1, tile_features.shape[-1])  # (T * Q, D)
        return anyres.pack_image_features(tile_features, tuple(image_hw), self.pinpoints, self.tile_size,
                                          self.patch_size, image_newline)

    def to_dict(self) -> dict:
        return asdict(self)

"""AnyRes geometry for the exported model and its processor (self-contained: transformers + torch only).

Written by ``mllm export`` beside ``modeling_mllm.py``; equal to ``mllm.anyres`` (the LLaVA-NeXT
conventions of transformers): sizes are (height, width), tile 0 is the whole image, the grid tiles come from
the best pinpoint canvas, their features are unpadded and (optionally) end each row with a newline vector.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from transformers.image_processing_utils import select_best_resolution


def grid_shape(image_hw: Sequence[int], pinpoints: Optional[List[List[int]]], tile: int) -> Tuple[int, int]:
    """(rows, cols) of grid tiles; (0, 0) at fixed resolution."""
    if not pinpoints:
        return 0, 0
    h, w = select_best_resolution(tuple(int(v) for v in image_hw), [tuple(p) for p in pinpoints])
    return h // tile, w // tile


def num_tiles(image_hw, pinpoints, tile: int) -> int:
    rows, cols = grid_shape(image_hw, pinpoints, tile)
    return 1 + rows * cols


def unpad_bounds(image_hw, current_hw) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of a padded feature map that holds the image."""
    oh, ow = (int(v) for v in image_hw)
    ch, cw = current_hw
    if ow / oh > cw / ch:
        new_h = int(round(oh * (cw / ow), 7))
        pad = (ch - new_h) // 2
        return pad, ch - pad, 0, cw
    new_w = int(round(ow * (ch / oh), 7))
    pad = (cw - new_w) // 2
    return 0, ch, pad, cw - pad


def num_image_tokens(image_hw, pinpoints, tile: int, patch: int, keeps_cls: bool, newline: bool,
                     queries_per_tile: Optional[int] = None) -> int:
    """<image> tokens one image becomes."""
    rows, cols = grid_shape(image_hw, pinpoints, tile)
    if queries_per_tile is not None:  # Q-Former: a fixed number of tokens per tile, no spatial packing
        return (1 + rows * cols) * queries_per_tile
    g = tile // patch
    if rows == 0:
        return g * g + int(keeps_cls)
    top, bottom, left, right = unpad_bounds(image_hw, (rows * g, cols * g))
    h, w = bottom - top, right - left
    return g * g + h * w + (h if newline else 0)


def pack(tile_features: torch.Tensor, image_hw, pinpoints, tile: int, patch: int,
         image_newline: Optional[torch.Tensor], spatial: bool) -> torch.Tensor:
    """(T, t, D) features of one image's tiles -> (num_image_tokens, D)."""
    if not spatial:
        return tile_features.reshape(-1, tile_features.shape[-1])  # (T * Q, D)
    rows, cols = grid_shape(image_hw, pinpoints, tile)
    base = tile_features[0]  # (t, D)
    if rows == 0:
        return base
    g = tile // patch
    dim = tile_features.shape[-1]
    # (rows*cols, g*g, D) -> (rows*g, cols*g, D), one map in image layout
    canvas = tile_features[1:].reshape(rows, cols, g, g, dim).permute(0, 2, 1, 3, 4).reshape(rows * g, cols * g, dim)
    top, bottom, left, right = unpad_bounds(image_hw, canvas.shape[:2])
    canvas = canvas[top:bottom, left:right]  # (h, w, D)
    if image_newline is not None:
        nl = image_newline.to(canvas.dtype).expand(canvas.shape[0], 1, dim)
        canvas = torch.cat((canvas, nl), dim=1)  # (h, w + 1, D)
    return torch.cat((base, canvas.reshape(-1, dim)), dim=0)

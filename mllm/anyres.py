"""AnyRes geometry: the single source of truth for tiling, token counts and feature packing.

The data pipeline asks how many ``<image>`` tokens to reserve; the model packs the tower's tile features
into exactly that many vectors. Both call the functions below, so they agree by construction::

    from mllm import anyres
    pins = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
    anyres.num_tiles((480, 640), pins, 336)                          # 1 base tile + 2x2 grid = 5
    n = anyres.num_image_tokens((480, 640), pins, 336, 14, "default")  # 576 + unpadded grid + newlines
    packed = anyres.pack_image_features(feats, (480, 640), pins, 336, 14, newline)  # (n, D)

Conventions (transformers' LLaVA-NeXT ones): sizes are ``(height, width)``; ``grid_pinpoints`` lists the
``[h, w]`` canvases an image may be tiled on; every tile is ``tile_size`` square and yields a
``(tile_size // patch_size) ** 2`` patch grid. Empty or ``None`` pinpoints mean fixed resolution
(LLaVA-1.5): one tile and no newline, which is the degenerate case of the same formulas (a 0 x 0 grid).
The numbers equal transformers' ``select_best_resolution``, ``LlavaNextProcessor`` feature counts and
``LlavaNextModel.pack_image_features`` bit for bit, including their float rounding.
"""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

HW = Tuple[int, int]
SizeLike = Union[Sequence[int], torch.Tensor, np.ndarray]
Pinpoints = Optional[Sequence[Sequence[int]]]

SELECT_STRATEGIES = ("default", "full")


# ---- validation -------------------------------------------------------------------------------------
def _as_hw(size: SizeLike, what: str = "image size") -> HW:
    """(height, width) as two positive Python ints; tensors and arrays are accepted (model side)."""
    if isinstance(size, (torch.Tensor, np.ndarray)):
        size = size.tolist()
    try:
        h, w = size  # type: ignore[misc]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a (height, width) pair, got {size!r}") from None
    if isinstance(h, float) and h.is_integer():
        h = int(h)
    if isinstance(w, float) and w.is_integer():
        w = int(w)
    if any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for v in (h, w)):
        raise ValueError(f"{what} must hold integers (height, width), got {size!r}")
    if h <= 0 or w <= 0:
        raise ValueError(f"{what} must be positive (height, width), got ({h}, {w})")
    return int(h), int(w)


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def check_pinpoints(grid_pinpoints: Pinpoints, tile_size: Optional[int] = None) -> List[HW]:
    """Validated pinpoints as a list of (h, w); [] for fixed resolution.

    With ``tile_size``, every pinpoint must be a multiple of it: the canvas is cut into whole tiles and the
    model views the grid features as (rows, cols, p, p), which only works for whole tiles.
    """
    if grid_pinpoints is None:
        return []
    if isinstance(grid_pinpoints, (str, bytes)) or not isinstance(grid_pinpoints, Sequence):
        raise ValueError(f"grid_pinpoints must be a list of [height, width] pairs, got {grid_pinpoints!r}")
    if tile_size is not None:
        tile_size = _positive_int(tile_size, "tile_size")
    out = []
    for i, pin in enumerate(grid_pinpoints):
        h, w = _as_hw(pin, f"grid_pinpoints[{i}]")
        if tile_size is not None and (h % tile_size or w % tile_size):
            raise ValueError(f"grid_pinpoints[{i}] = [{h}, {w}] is not a multiple of tile_size {tile_size}: "
                             f"a canvas must be cut into whole tiles")
        out.append((h, w))
    return out


def _check_tile_patch(tile_size: int, patch_size: int) -> Tuple[int, int]:
    tile_size = _positive_int(tile_size, "tile_size")
    patch_size = _positive_int(patch_size, "patch_size")
    if patch_size > tile_size:
        raise ValueError(f"patch_size {patch_size} is larger than tile_size {tile_size}")
    # Not necessarily divisible: SigLIP-so400m is 384 px with 14 px patches, and its conv floors to 27.
    return tile_size, patch_size


# ---- tiling -----------------------------------------------------------------------------------------
def select_best_resolution(image_hw: SizeLike, grid_pinpoints: Sequence[Sequence[int]]) -> HW:
    """The pinpoint that keeps the most of the image's pixels, then wastes the least canvas.

    Same result as ``transformers.image_processing_utils.select_best_resolution`` for every input
    (same float expressions, same tie-breaking: the first pinpoint wins among equals).
    """
    oh, ow = _as_hw(image_hw)
    pins = check_pinpoints(grid_pinpoints)
    if not pins:
        raise ValueError("select_best_resolution needs at least one grid pinpoint "
                         "(empty pinpoints mean fixed resolution, which has no canvas to choose)")
    best, best_effective, best_wasted = pins[0], 0, math.inf
    for h, w in pins:
        scale = min(w / ow, h / oh)
        # int() truncation and the cap at the original area are transformers' rules: upscaling gains nothing.
        effective = min(int(ow * scale) * int(oh * scale), ow * oh)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (h, w), effective, wasted
    return best


def grid_shape(image_hw: SizeLike, grid_pinpoints: Pinpoints, tile_size: int) -> HW:
    """(rows, cols) of grid tiles the image is cut into; (0, 0) at fixed resolution."""
    tile_size = _positive_int(tile_size, "tile_size")
    pins = check_pinpoints(grid_pinpoints, tile_size)
    if not pins:
        _as_hw(image_hw)
        return 0, 0
    h, w = select_best_resolution(image_hw, pins)
    return h // tile_size, w // tile_size


def num_tiles(image_hw: SizeLike, grid_pinpoints: Pinpoints, tile_size: int) -> int:
    """Tiles fed to the tower for one image: the base (whole-image) tile + rows * cols grid tiles."""
    rows, cols = grid_shape(image_hw, grid_pinpoints, tile_size)
    return 1 + rows * cols


def fit_size(image_hw: SizeLike, target_hw: SizeLike) -> HW:
    """Size of the image resized to fit inside ``target_hw`` keeping its aspect ratio.

    The long side (relative to the target) fills the target exactly; the other is rounded *up*, capped at
    the target (transformers' ``get_patch_output_size``). The processor pads the rest.
    """
    oh, ow = _as_hw(image_hw)
    th, tw = _as_hw(target_hw, "target size")
    scale_w, scale_h = tw / ow, th / oh
    if scale_w < scale_h:
        return min(math.ceil(oh * scale_w), th), tw
    return th, min(math.ceil(ow * scale_h), tw)


def pad_offsets(inner_hw: SizeLike, target_hw: SizeLike) -> HW:
    """(top, left) at which ``inner_hw`` is pasted to centre it on ``target_hw`` (odd pixel goes after)."""
    ih, iw = _as_hw(inner_hw, "inner size")
    th, tw = _as_hw(target_hw, "target size")
    if ih > th or iw > tw:
        raise ValueError(f"cannot pad ({ih}, {iw}) onto a smaller canvas ({th}, {tw})")
    return (th - ih) // 2, (tw - iw) // 2


# ---- unpadding ----------------------------------------------------------------------------------------
def unpad_bounds(original_hw: SizeLike, current_hw: SizeLike) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of the region of a (current_h, current_w) feature map that holds the
    image rather than the processor's padding.

    The padding is symmetric (the map is cropped by the same amount on both sides), with transformers'
    rounding: ``int(round(x, 7))`` of the scaled side, so counts and packed features agree with theirs.
    """
    oh, ow = _as_hw(original_hw, "original size")
    ch, cw = _as_hw(current_hw, "feature map size")
    if ow / oh > cw / ch:  # wider than the canvas: padding is above and below
        new_h = int(round(oh * (cw / ow), 7))
        pad = (ch - new_h) // 2
        return pad, ch - pad, 0, cw
    new_w = int(round(ow * (ch / oh), 7))
    pad = (cw - new_w) // 2
    return 0, ch, pad, cw - pad


def unpad_image(tensor: torch.Tensor, original_hw: SizeLike) -> torch.Tensor:
    """Crop the padding off a (C, H, W) map of a padded-and-resized image (a view, no copy)."""
    if tensor.dim() != 3:
        raise ValueError(f"unpad_image expects a (C, H, W) tensor, got shape {tuple(tensor.shape)}")
    top, bottom, left, right = unpad_bounds(original_hw, tensor.shape[1:])
    return tensor[:, top:bottom, left:right]


def _unpadded_grid_hw(image_hw: HW, rows: int, cols: int, grid: int) -> HW:
    if rows == 0:
        return 0, 0
    top, bottom, left, right = unpad_bounds(image_hw, (rows * grid, cols * grid))
    return bottom - top, right - left


# ---- token counts -------------------------------------------------------------------------------------
def num_image_tokens(image_hw: SizeLike, grid_pinpoints: Pinpoints, tile_size: int, patch_size: int,
                     select_strategy: str, *, has_cls: bool = True, image_newline: bool = True) -> int:
    """Number of feature vectors the model produces for one image, i.e. ``<image>`` tokens to reserve.

    base tile (grid**2, +1 when "full" keeps a CLS) + unpadded grid features + one newline per unpadded
    row (AnyRes only). ``select_strategy``: "default" drops the CLS token (needs ``has_cls``), "full" keeps
    every token (SigLIP, which has no CLS).
    """
    tile_size, patch_size = _check_tile_patch(tile_size, patch_size)
    if select_strategy not in SELECT_STRATEGIES:
        raise ValueError(f"unknown select_strategy {select_strategy!r}; "
                         f"known: {', '.join(SELECT_STRATEGIES)}")
    if select_strategy == "default" and not has_cls:
        raise ValueError("select_strategy 'default' drops the CLS token, but this tower has none "
                         "(it would drop a real patch); use 'full'")
    hw = _as_hw(image_hw)
    rows, cols = grid_shape(hw, grid_pinpoints, tile_size)
    keeps_cls = select_strategy == "full" and has_cls
    if rows and keeps_cls:
        raise ValueError("select_strategy 'full' with a CLS tower cannot be packed with AnyRes tiles "
                         "(the CLS token is not a patch of the grid); use 'default'")
    grid = tile_size // patch_size
    h, w = _unpadded_grid_hw(hw, rows, cols, grid)
    newlines = h if image_newline else 0
    return grid * grid + int(keeps_cls) + h * w + newlines


# ---- feature packing (model side) -----------------------------------------------------------------------
def pack_image_features(tile_features: torch.Tensor, image_hw: SizeLike, grid_pinpoints: Pinpoints,
                        tile_size: int, patch_size: int,
                        image_newline: Optional[torch.Tensor]) -> torch.Tensor:
    """Pack one image's tile features into the sequence the LLM sees: (T, L, D) -> (N, D).

    Tile 0 is the base tile, kept as is; tiles 1.. are stitched into one (rows*g, cols*g) map, the
    padding is cropped off, and ``image_newline`` (D,) is appended after every row. At fixed resolution
    the single tile is returned unchanged (no newline). N == num_image_tokens(...) always.
    """
    tile_size, patch_size = _check_tile_patch(tile_size, patch_size)
    hw = _as_hw(image_hw)
    rows, cols = grid_shape(hw, grid_pinpoints, tile_size)
    if tile_features.dim() != 3:
        raise ValueError(f"tile_features must be (tiles, tokens, dim), "
                         f"got shape {tuple(tile_features.shape)}")
    if tile_features.shape[0] != 1 + rows * cols:
        raise ValueError(f"image of size {hw} needs {1 + rows * cols} tiles (1 base + {rows}x{cols} grid), "
                         f"got features for {tile_features.shape[0]}")
    base = tile_features[0]  # (L, D)
    if rows == 0:
        return base
    grid = tile_size // patch_size
    dim = tile_features.shape[-1]
    if tile_features.shape[1] != grid * grid:
        raise ValueError(f"AnyRes tiles must have {grid}x{grid} = {grid * grid} tokens each "
                         f"(tile {tile_size}, patch {patch_size}), got {tile_features.shape[1]}; "
                         f"select_strategy 'full' with a CLS tower cannot be packed")
    # (rows*cols, g*g, D) -> (rows, g, cols, g, D) -> (rows*g, cols*g, D): one map in image layout
    canvas = tile_features[1:].reshape(rows, cols, grid, grid, dim).permute(0, 2, 1, 3, 4)
    canvas = canvas.reshape(rows * grid, cols * grid, dim)
    top, bottom, left, right = unpad_bounds(hw, canvas.shape[:2])
    canvas = canvas[top:bottom, left:right]  # (h, w, D)
    if image_newline is not None:
        if image_newline.shape != (dim,):
            raise ValueError(f"image_newline must have shape ({dim},), got {tuple(image_newline.shape)}")
        newline = image_newline.to(canvas.device, canvas.dtype).expand(canvas.shape[0], 1, dim)
        canvas = torch.cat((canvas, newline), dim=1)  # (h, w + 1, D)
    return torch.cat((base, canvas.reshape(-1, dim)), dim=0)  # (g*g + h*(w+1), D)


def pack_image_features_batch(tile_features: Union[torch.Tensor, Sequence[torch.Tensor]],
                              image_sizes: Union[torch.Tensor, Sequence[SizeLike]], grid_pinpoints: Pinpoints,
                              tile_size: int, patch_size: int,
                              image_newline: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Pack a batch: per-image (T_i, L, D) features, or the tower's flat (sum T_i, L, D) output which is
    split by each image's tile count. Returns one (N_i, D) tensor per image, in order."""
    sizes = [_as_hw(s, f"image_sizes[{i}]") for i, s in enumerate(image_sizes)]
    if isinstance(tile_features, torch.Tensor):
        counts = [num_tiles(s, grid_pinpoints, tile_size) for s in sizes]
        if tile_features.shape[0] != sum(counts):
            raise ValueError(f"tile_features hold {tile_features.shape[0]} tiles but image_sizes need "
                             f"{sum(counts)} ({counts})")
        tile_features = torch.split(tile_features, counts, dim=0)
    if len(tile_features) != len(sizes):
        raise ValueError(f"got tile features for {len(tile_features)} images but {len(sizes)} image_sizes")
    out = []
    for i, (feats, size) in enumerate(zip(tile_features, sizes)):
        try:
            out.append(pack_image_features(feats, size, grid_pinpoints, tile_size, patch_size, image_newline))
        except ValueError as e:
            raise ValueError(f"image {i}: {e}") from None
    return out

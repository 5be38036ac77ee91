"""Per-patch targets of a Shapes scene at the tiles the model sees (privileged supervision and probing).

    proc = AnyResImageProcessor.from_config(get_preset("tiny"))
    t = patch_targets(scene, proc, 8)     # {"colour", "kind", "size", "text", "owner"}: (T, G*G) long each
    tiles, _ = proc.process(render_scene(scene))   # (T, 3, S, S): the same T tiles, patch for patch

The scene's masks are painted into an index map (0 background, 1..n the shapes in scene order, n+1 the
label) and pushed through exactly the processor's geometry (the squashed base tile, then the image fitted
and centred on its best pinpoint and cut into tiles), with NEAREST resizing so that no index is blended.
A patch belongs to the object covering most of it if that object covers at least ``MIN_COVER`` of it.
Targets: ``colour`` 0 = none, 1.. = index in COLOURS + 1; ``kind`` 0 = none, 1.. = KINDS + 1; ``size``
0 = none, 1 small, 2 large; ``text`` 0 = no label, 1.. = index in ``TEXTS`` + 1; ``owner`` the map's index
(which object it is). ``patch_centres`` gives where each grid patch's centre lies in the image.
"""
from __future__ import annotations

from typing import Dict, Tuple

import numpy as np
import torch
from PIL import Image

from data_pipelines.shapes.render import shape_mask, text_mask
from torch import nn

from data_pipelines.shapes.scene import (COLOURS, KINDS, LETTERS, SIZES, WORDS, Scene, cell_rect, label_places_of,
                                         positions_of)
from mllm import anyres

TEXTS: Tuple[str, ...] = LETTERS + WORDS
MIN_COVER = 0.25
_COLOURS, _SIZES = list(COLOURS), SIZES
# classes per target, "none" (0) included
HEADS: Dict[str, int] = {"colour": 1 + len(COLOURS), "kind": 1 + len(KINDS), "size": 1 + len(SIZES),
                         "text": 1 + len(TEXTS)}
BACKGROUND_WEIGHT = 0.2   # most patches are background; down-weight it so that small shapes count


class PatchHeads(nn.Module):
    """One linear head per target: (..., C) -> {target: (..., classes)}, and their summed cross-entropy
    (on patch features or pooled cell features; training aids of encoder pretraining, and the probe)."""

    def __init__(self, dim: int):
        super().__init__()
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in HEADS.items()})

    def forward(self, feats: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {k: h(feats) for k, h in self.heads.items()}

    def loss(self, feats: torch.Tensor, targets: Dict[str, torch.Tensor]) -> torch.Tensor:
        total = feats.new_zeros(())
        for k, logits in self(feats).items():
            w = torch.ones(HEADS[k], dtype=logits.dtype)
            w[0] = BACKGROUND_WEIGHT
            total = total + nn.functional.cross_entropy(logits.reshape(-1, HEADS[k]), targets[k].reshape(-1),
                                                        weight=w)
        return total


def index_map(scene: Scene) -> Image.Image:
    """An "L" image of the scene's size: 0 background, i+1 shape i, len(shapes)+1 the label."""
    m = Image.new("L", (scene.width, scene.height), 0)
    for i, s in enumerate(scene.shapes):
        x0, y0, x1, y1 = s.box
        m.paste(i + 1, (x0, y0, x1, y1), shape_mask(s.kind, x1 - x0))
    if scene.label is not None:
        x0, y0, x1, y1 = scene.label.box
        m.paste(len(scene.shapes) + 1, (x0, y0, x1, y1), text_mask(scene.label.text, scene.label.scale))
    return m


def _tile_maps(m: Image.Image, tile: int, pinpoints) -> np.ndarray:
    """(T, S, S) index maps of the base tile and the grid tiles, in the processor's order."""
    tiles = [np.asarray(m.resize((tile, tile), Image.Resampling.NEAREST))]
    if pinpoints:
        h, w = m.height, m.width
        bh, bw = anyres.select_best_resolution((h, w), pinpoints)
        nh, nw = anyres.fit_size((h, w), (bh, bw))
        top, left = anyres.pad_offsets((nh, nw), (bh, bw))
        canvas = np.zeros((bh, bw), dtype=np.uint8)
        canvas[top:top + nh, left:left + nw] = np.asarray(m.resize((nw, nh), Image.Resampling.NEAREST))
        for r in range(bh // tile):
            for c in range(bw // tile):
                tiles.append(canvas[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile])
    return np.stack(tiles)


def _dominant(tiles: np.ndarray, patch: int) -> np.ndarray:
    """(T, S, S) index maps -> (T, G*G) index of the object covering most of each patch (0 if < MIN_COVER)."""
    t, s, _ = tiles.shape
    g = s // patch
    p = tiles[:, : g * patch, : g * patch].reshape(t, g, patch, g, patch).transpose(0, 1, 3, 2, 4)
    p = p.reshape(t * g * g, patch * patch)
    counts = np.stack([(p == v).sum(1) for v in range(int(p.max()) + 1)], axis=1)  # (T*G*G, objects+1)
    counts[:, 0] = 0
    best = counts.argmax(1)
    best[counts.max(1) < MIN_COVER * patch * patch] = 0
    return best.reshape(t, g * g)


def patch_targets(scene: Scene, processor, patch: int) -> Dict[str, torch.Tensor]:
    """Per-patch targets for every tile ``processor`` makes of this scene (``patch``: the tower's patch
    size in px; see the module docstring)."""
    owner = _dominant(_tile_maps(index_map(scene), processor.tile_size, processor.grid_pinpoints), patch)
    n = len(scene.shapes)
    lut = np.zeros((4, n + 2), dtype=np.int64)  # (colour, kind, size, text) per map index
    for i, s in enumerate(scene.shapes):
        lut[:, i + 1] = (_COLOURS.index(s.colour) + 1, KINDS.index(s.kind) + 1, _SIZES.index(s.size) + 1, 0)
    if scene.label is not None:
        lut[3, n + 1] = TEXTS.index(scene.label.text) + 1
    out = {name: torch.from_numpy(lut[k][owner]) for k, name in enumerate(("colour", "kind", "size", "text"))}
    out["owner"] = torch.from_numpy(owner)
    return out


def patch_centres(scene: Scene, processor, patch: int) -> np.ndarray:
    """(rows*cols, G*G, 2) image (x, y) of each grid patch's centre, NaN where the patch is padding."""
    tile = processor.tile_size
    g = tile // patch
    h, w = scene.height, scene.width
    bh, bw = anyres.select_best_resolution((h, w), processor.grid_pinpoints)
    nh, nw = anyres.fit_size((h, w), (bh, bw))
    top, left = anyres.pad_offsets((nh, nw), (bh, bw))
    out = np.full(((bh // tile) * (bw // tile), g * g, 2), np.nan)
    k = 0
    for r in range(bh // tile):
        for c in range(bw // tile):
            for i in range(g):
                for j in range(g):
                    cy, cx = r * tile + i * patch + patch / 2, c * tile + j * patch + patch / 2
                    if top <= cy < top + nh and left <= cx < left + nw:
                        out[k, i * g + j] = ((cx - left) * w / nw, (cy - top) * h / nh)
            k += 1
    return out


# ---- cells: what a question reads (the shape or label in one cell of the layout) ------------------------
def layout_cells(scene: Scene) -> Tuple[str, ...]:
    """Every cell of the scene's layout: positions, then label places that are not positions."""
    positions = positions_of(scene.width, scene.height)
    return positions + tuple(p for p in label_places_of(scene.width, scene.height) if p not in positions)


def cell_targets(scene: Scene) -> Dict[str, torch.Tensor]:
    """{target: (cells,)} for ``layout_cells(scene)``: what occupies each cell (0 = nothing)."""
    cells = layout_cells(scene)
    out = {k: torch.zeros(len(cells), dtype=torch.long) for k in HEADS}
    for s in scene.shapes:
        i = cells.index(s.position)
        out["colour"][i], out["kind"][i] = _COLOURS.index(s.colour) + 1, KINDS.index(s.kind) + 1
        out["size"][i] = _SIZES.index(s.size) + 1
    if scene.label is not None:
        out["text"][cells.index(scene.label.corner)] = TEXTS.index(scene.label.text) + 1
    return out


def cell_assignment(scene: Scene, processor, patch: int) -> torch.Tensor:
    """(T, G*G) long: for each patch of each tile, ``2 * cell`` (grid tiles) or ``2 * cell + 1`` (the base
    tile) of the layout cell its centre lies in, -1 for padding. Pooling by these ids gives each cell a
    high-resolution and a global-view feature."""
    cells = layout_cells(scene)
    rects = np.array([cell_rect(scene.width, scene.height, c) for c in cells], dtype=np.float64)  # (cells, 4)
    g = processor.tile_size // patch

    def which(xy: np.ndarray) -> np.ndarray:  # (N, 2) -> (N,) cell index or -1
        x, y = xy[:, :1], xy[:, 1:]
        inside = (x >= rects[:, 0]) & (x < rects[:, 2]) & (y >= rects[:, 1]) & (y < rects[:, 3])
        return np.where(inside.any(1), inside.argmax(1), -1)

    j, i = np.meshgrid(np.arange(g), np.arange(g))
    base_xy = np.stack([(j.ravel() + 0.5) * patch * scene.width / processor.tile_size,
                        (i.ravel() + 0.5) * patch * scene.height / processor.tile_size], 1)
    base = which(base_xy)
    rows = [np.where(base >= 0, 2 * base + 1, -1)]
    if processor.grid_pinpoints:
        centres = patch_centres(scene, processor, patch)  # (grid tiles, G*G, 2)
        for t in range(centres.shape[0]):
            c = np.where(np.isnan(centres[t, :, 0]), -1, which(np.nan_to_num(centres[t], nan=-1.0)))
            rows.append(np.where(c >= 0, 2 * c, -1))
    return torch.from_numpy(np.stack(rows)).long()


def pool_cells(feats: torch.Tensor, assign: torch.Tensor, n_cells: int) -> torch.Tensor:
    """Mean patch feature per (cell, view): feats (N, L, C), assign (N, L) ids in [0, 2 * n_cells) or -1
    -> (n_cells, 2 * C) = [grid mean, base mean] per cell."""
    c = feats.shape[-1]
    f, a = feats.reshape(-1, c), assign.reshape(-1)
    keep = a >= 0
    sums = feats.new_zeros(2 * n_cells, c).index_add_(0, a[keep], f[keep])
    counts = torch.bincount(a[keep], minlength=2 * n_cells).clamp(min=1).to(feats.dtype)
    return (sums / counts.unsqueeze(1)).reshape(n_cells, 2 * c)

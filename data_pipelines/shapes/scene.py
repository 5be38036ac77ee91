"""Sampling Shapes-world scenes: which shapes, in which colours and sizes, where, and an optional label.

    rng = scene_rng(seed=0, split="train", index=7)
    scene = sample_scene(rng, scene_id="train_000007", split="train", image="images/train/train_000007.png")
    record = scene.to_dict()          # JSON-ready (one line of scenes_train.jsonl)
    scene = Scene.from_dict(record)   # and back, with errors that name the bad field
    canvas_scale(w, h)                # image px -> px of the AnyRes canvas the tiny model sees
    cell_rect(w, h, "left")           # the pixel rectangle of a position (or label corner) in that image

Sizes are set where the model looks. The tiny model does not see an image's pixels: it sees the image
resized onto an AnyRes canvas (``CANVAS_PINPOINTS``, ``TILE`` px tiles cut into ``PATCH`` px patches) plus a
squashed base view. So every size here is given in patches *of that canvas*: ``canvas_scale`` says how many
canvas pixels one image pixel becomes, and a large shape is ``LARGE_PATCHES`` patches wide on the canvas
whether the image is 96 or 400 px. A label letter is about three patches tall there, large enough for the
strokes to survive the resize.

Layout. Squarish images (aspect at most ``GRID_ASPECT``) are cut into a 3x3 grid: shapes sit only in the
five "plus" cells (left, right, top, bottom, center), a label in a corner cell. Elongated images are cut
into three cells along their long axis ("line" layout: left, center, right for wide images, top, center,
bottom for tall ones); a label then takes one of the two end cells and its ``corner`` is that end's name.
In both layouts every cell is at least ~3.6 patches on its short side at the canvas, so a shape never has
to shrink to fit, and an elongated image never squashes its shapes into a thin row of cells. At most one
shape per cell, inset from the cell's edges, so every shape has exactly one position word and no two
shapes can touch. A (colour, kind) pair appears at most once, so "the red circle" always names one shape.

Each shape records its drawing ``box`` and, measured from the very mask that ``render.py`` paints,
its pixel ``bbox`` (x0, y0, x1, y1; x1/y1 exclusive), its ``centroid`` (x, y; a pixel inside the shape)
and its ``area`` in pixels.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from data_pipelines.shapes.render import shape_mask, text_mask
from mllm import anyres
from mllm.presets import TINY_PINPOINTS, TINY_TOWER

# ---- the closed vocabulary -------------------------------------------------------------------------
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 84, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 60, 180),
    "orange": (245, 130, 20),
}
KINDS: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
PLURALS: Dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles",
                           "star": "stars", "cross": "crosses"}
SIZES: Tuple[str, ...] = ("small", "large")
# position word -> (row, col) of its grid cell
REGIONS: Dict[str, Tuple[int, int]] = {"top": (0, 1), "left": (1, 0), "center": (1, 1),
                                       "right": (1, 2), "bottom": (2, 1)}
CORNERS: Dict[str, Tuple[int, int]] = {"top-left": (0, 0), "top-right": (0, 2),
                                       "bottom-left": (2, 0), "bottom-right": (2, 2)}
BACKGROUND: Tuple[int, int, int] = (245, 245, 240)
TEXT_COLOUR: Tuple[int, int, int] = (25, 25, 25)
LETTERS: Tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Short words that are neither colour nor shape names, so OCR answers never collide with other answers.
WORDS: Tuple[str, ...] = ("GO", "UP", "HI", "NO", "OK", "CAT", "DOG", "SUN", "BOX", "CUP", "HAT",
                          "KEY", "MAP", "PEN", "BUS", "FOX")

# ---- geometry knobs ----------------------------------------------------------------------------------
# The model's view (the tiny preset): sizes below are in patches of this canvas, see canvas_scale().
TILE, PATCH = TINY_TOWER["image_size"], TINY_TOWER["patch_size"]
CANVAS_PINPOINTS = [list(p) for p in TINY_PINPOINTS]
MIN_LONG_SIDE, MAX_SIDE = 96, 400       # image long side in pixels
MIN_SIDE = 32                           # image short side in pixels
MAX_ASPECT = 3.0                        # long side / short side
GRID_ASPECT = 1.1                       # up to this aspect: 3x3 grid; beyond: three cells in a line
GRID_PROBABILITY = 0.4                  # share of squarish (3x3 grid) images
SHAPE_COUNT_WEIGHTS = {1: 0.2, 2: 0.3, 3: 0.3, 4: 0.2}   # a line has 3 cells: counts are capped there
LARGE_PATCHES, SMALL_PATCHES = 3.0, 2.0  # shape side on the canvas, in patches (area ratio 2.25)
CELL_MARGIN_PX = 2.0                    # least gap between a shape and its cell's edge, canvas px
LABEL_PROBABILITY = 0.35
LABEL_CANVAS_SCALE = 4.0                # wanted font scale on the canvas: the 6-px glyphs become ~3 patches
MIN_LABEL_CANVAS_SCALE = 3.0            # below this, strokes blur into their neighbours at the canvas
LABEL_FILL = 0.9                        # a label takes at most this share of its cell's width and height
# Kept for square images drawn with _place_shape (the generation data): fractions of the cell.
CELL_MARGIN = 0.08                      # gap between a shape and its cell's edge, x the cell's short side
LARGE, SMALL = 0.80, 0.40               # shape side, x the cell's short side
MIN_SHAPE_SIDE = 6

Box = Tuple[int, int, int, int]


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    position: str
    box: Box                            # the square the shape is drawn in
    bbox: Box                           # measured from its pixels
    centroid: Tuple[int, int]
    area: int

    @property
    def name(self) -> str:
        return f"{self.colour} {self.kind}"

    @property
    def rgb(self) -> Tuple[int, int, int]:
        return COLOURS[self.colour]

    @property
    def cell(self) -> Tuple[int, int]:
        return REGIONS[self.position]


@dataclass(frozen=True)
class Label:
    text: str
    corner: str
    box: Box                            # exactly the ink's bounding box
    scale: int
    rgb: Tuple[int, int, int] = TEXT_COLOUR


@dataclass(frozen=True)
class Scene:
    id: str
    split: str
    image: str                          # path relative to the dataset root
    width: int
    height: int
    shapes: Tuple[Shape, ...]
    label: Optional[Label] = None
    background: Tuple[int, int, int] = BACKGROUND

    def shape_named(self, colour: str, kind: str) -> Optional[Shape]:
        return next((s for s in self.shapes if s.colour == colour and s.kind == kind), None)

    def to_dict(self) -> Dict[str, Any]:
        return {
            "id": self.id, "split": self.split, "image": self.image,
            "width": self.width, "height": self.height, "background": list(self.background),
            "shapes": [{"kind": s.kind, "colour": s.colour, "size": s.size, "position": s.position,
                        "box": list(s.box), "bbox": list(s.bbox), "centroid": list(s.centroid),
                        "area": s.area} for s in self.shapes],
            "label": None if self.label is None else {
                "text": self.label.text, "corner": self.label.corner, "box": list(self.label.box),
                "scale": self.label.scale, "rgb": list(self.label.rgb)},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "scene") -> "Scene":
        def need(obj: Mapping[str, Any], key: str, ctx: str) -> Any:
            if key not in obj:
                raise ValueError(f"{ctx}: missing field {key!r}")
            return obj[key]

        where = f"{where} {d.get('id', '?')!r}"
        shapes = []
        for i, s in enumerate(need(d, "shapes", where)):
            ctx = f"{where} shapes[{i}]"
            kind, colour = need(s, "kind", ctx), need(s, "colour", ctx)
            if kind not in KINDS:
                raise ValueError(f"{ctx}.kind: unknown kind {kind!r} (known: {', '.join(KINDS)})")
            if colour not in COLOURS:
                raise ValueError(f"{ctx}.colour: unknown colour {colour!r} (known: {', '.join(COLOURS)})")
            size, position = need(s, "size", ctx), need(s, "position", ctx)
            if size not in SIZES:
                raise ValueError(f"{ctx}.size: unknown size {size!r} (known: {', '.join(SIZES)})")
            if position not in REGIONS:
                raise ValueError(f"{ctx}.position: unknown position {position!r} (known: {', '.join(REGIONS)})")
            shapes.append(Shape(kind=kind, colour=colour, size=size, position=position,
                                box=tuple(need(s, "box", ctx)),
                                bbox=tuple(need(s, "bbox", ctx)), centroid=tuple(need(s, "centroid", ctx)),
                                area=int(need(s, "area", ctx))))
        lab = d.get("label")
        label = None if lab is None else Label(
            text=need(lab, "text", f"{where} label"), corner=need(lab, "corner", f"{where} label"),
            box=tuple(need(lab, "box", f"{where} label")), scale=int(need(lab, "scale", f"{where} label")),
            rgb=tuple(lab.get("rgb", TEXT_COLOUR)))
        return cls(id=need(d, "id", where), split=need(d, "split", where), image=need(d, "image", where),
                   width=int(need(d, "width", where)), height=int(need(d, "height", where)),
                   shapes=tuple(shapes), label=label, background=tuple(d.get("background", BACKGROUND)))


def scene_rng(seed: int, split: str, index: int, purpose: str = "scene") -> random.Random:
    """An independent generator per (seed, split, image, purpose): a scene never depends on how many
    other scenes or questions were drawn before it. String seeds are hashed with SHA-512 by Python,
    so this is stable across processes and runs (unlike ``hash()``)."""
    return random.Random(f"shapes:{seed}:{split}:{index}:{purpose}")


def _cell_rect(width: int, height: int, row: int, col: int) -> Box:
    xs = [0, round(width / 3), round(2 * width / 3), width]
    ys = [0, round(height / 3), round(2 * height / 3), height]
    return xs[col], ys[row], xs[col + 1], ys[row + 1]


def canvas_scale(width: int, height: int) -> float:
    """Canvas pixels per image pixel: the factor AnyRes resizes this image by onto its best pinpoint
    (the same ``select_best_resolution`` and ``fit_size`` the processor uses)."""
    target = anyres.select_best_resolution((height, width), CANVAS_PINPOINTS)
    nh, nw = anyres.fit_size((height, width), target)
    return min(nh / height, nw / width)


def layout_of(width: int, height: int) -> str:
    """"grid" (3x3, squarish images) or "line" (three cells along the long axis)."""
    return "grid" if max(width, height) <= GRID_ASPECT * min(width, height) else "line"


def positions_of(width: int, height: int) -> Tuple[str, ...]:
    """The position words a shape can have in an image of this size."""
    if layout_of(width, height) == "grid":
        return tuple(REGIONS)
    return ("left", "center", "right") if width > height else ("top", "center", "bottom")


def label_places_of(width: int, height: int) -> Tuple[str, ...]:
    """Where a label can go: the four corners of a grid, the two ends of a line."""
    if layout_of(width, height) == "grid":
        return tuple(sorted(CORNERS))
    return ("left", "right") if width > height else ("top", "bottom")


def cell_rect(width: int, height: int, place: str) -> Box:
    """The pixel rectangle of a position word or label place in an image of this size."""
    if layout_of(width, height) == "grid":
        where = {**REGIONS, **CORNERS}
        if place not in where:
            raise ValueError(f"scene.cell_rect: {place!r} is not a cell of a 3x3 grid")
        return _cell_rect(width, height, *where[place])
    order = positions_of(width, height)
    if place not in order:
        raise ValueError(f"scene.cell_rect: {place!r} is not a cell of a {width}x{height} line layout {order}")
    i = order.index(place)
    if width > height:
        xs = [0, round(width / 3), round(2 * width / 3), width]
        return xs[i], 0, xs[i + 1], height
    ys = [0, round(height / 3), round(2 * height / 3), height]
    return 0, ys[i], width, ys[i + 1]


def sample_size(rng: random.Random) -> Tuple[int, int]:
    """(width, height): squarish (aspect up to GRID_ASPECT) with probability GRID_PROBABILITY, else an
    aspect log-uniform in (GRID_ASPECT, MAX_ASPECT]; the long side uniform in [96, 400]."""
    long_side = rng.randint(MIN_LONG_SIDE, MAX_SIDE)
    low = 0.0 if rng.random() < GRID_PROBABILITY else math.log(GRID_ASPECT) + 1e-6
    high = math.log(GRID_ASPECT) if low == 0.0 else math.log(MAX_ASPECT)
    aspect = math.exp(rng.uniform(low, high))
    short_side = max(MIN_SIDE, round(long_side / aspect))
    # rounding can cross GRID_ASPECT; keep the layout the aspect was drawn for
    if (low == 0.0) != (long_side <= GRID_ASPECT * short_side):
        short_side = math.ceil(long_side / GRID_ASPECT) if low == 0.0 else math.floor(long_side / GRID_ASPECT) - 1
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _measure(kind: str, box: Box) -> Tuple[Box, Tuple[int, int], int]:
    x0, y0, x1, _ = box
    mask = np.asarray(shape_mask(kind, x1 - x0)) > 0  # (side, side) bool
    ys, xs = np.nonzero(mask)
    bbox = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
    cx, cy = int(round(float(xs.mean()))), int(round(float(ys.mean())))
    if not mask[cy, cx]:  # a concave shape's mean can fall outside it; use the nearest inside pixel
        k = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        cx, cy = int(xs[k]), int(ys[k])
    return bbox, (x0 + cx, y0 + cy), int(mask.sum())


def _place_shape(rng: random.Random, width: int, height: int, kind: str, colour: str, size: str,
                 position: str) -> Shape:
    cx0, cy0, cx1, cy1 = _cell_rect(width, height, *REGIONS[position])
    short = min(cx1 - cx0, cy1 - cy0)
    margin = max(2, round(CELL_MARGIN * short))
    fraction = LARGE if size == "large" else SMALL
    side = max(MIN_SHAPE_SIDE, min(short - 2 * margin, round(fraction * short)))
    x0 = rng.randint(cx0 + margin, max(cx0 + margin, cx1 - margin - side))
    y0 = rng.randint(cy0 + margin, max(cy0 + margin, cy1 - margin - side))
    box = (x0, y0, x0 + side, y0 + side)
    bbox, centroid, area = _measure(kind, box)
    return Shape(kind=kind, colour=colour, size=size, position=position, box=box, bbox=bbox,
                 centroid=centroid, area=area)


def _place_label_in_cell(rng: random.Random, width: int, height: int, corner: str) -> Optional[Label]:
    # The font scale is an integer in image pixels (NEAREST-scaled bitmap glyphs) chosen so that the
    # glyphs are about LABEL_CANVAS_SCALE x their 6 px on the canvas; a word that does not fit its cell
    # at a readable scale falls back to its first letter, and a letter that does not fit is dropped.
    cx0, cy0, cx1, cy1 = cell_rect(width, height, corner)
    s = canvas_scale(width, height)
    text = rng.choice(LETTERS) if rng.random() < 0.6 else rng.choice(WORDS)
    for candidate in (text, text[0]):
        ink_w, ink_h = text_mask(candidate).size
        fit = min(LABEL_FILL * (cx1 - cx0) / ink_w, LABEL_FILL * (cy1 - cy0) / ink_h)
        scale = min(int(fit), max(1, round(LABEL_CANVAS_SCALE / s)))
        if scale >= 1 and scale * s >= MIN_LABEL_CANVAS_SCALE:
            w, h = ink_w * scale, ink_h * scale
            x0 = rng.randint(cx0 + (cx1 - cx0 - w) // 4, cx1 - w - (cx1 - cx0 - w) // 4)
            y0 = rng.randint(cy0 + (cy1 - cy0 - h) // 4, cy1 - h - (cy1 - cy0 - h) // 4)
            return Label(text=candidate, corner=corner, box=(x0, y0, x0 + w, y0 + h), scale=scale)
    return None


def _place_in_cell(rng: random.Random, width: int, height: int, kind: str, colour: str, size: str,
                   position: str) -> Shape:
    """A shape of ``LARGE_PATCHES``/``SMALL_PATCHES`` canvas patches, anywhere inside its cell's margin."""
    cx0, cy0, cx1, cy1 = cell_rect(width, height, position)
    s = canvas_scale(width, height)
    margin = max(1, math.ceil(CELL_MARGIN_PX / s))
    patches = LARGE_PATCHES if size == "large" else SMALL_PATCHES
    side = max(MIN_SHAPE_SIDE, min(cx1 - cx0 - 2 * margin, cy1 - cy0 - 2 * margin, round(patches * PATCH / s)))
    x0 = rng.randint(cx0 + margin, max(cx0 + margin, cx1 - margin - side))
    y0 = rng.randint(cy0 + margin, max(cy0 + margin, cy1 - margin - side))
    box = (x0, y0, x0 + side, y0 + side)
    bbox, centroid, area = _measure(kind, box)
    return Shape(kind=kind, colour=colour, size=size, position=position, box=box, bbox=bbox,
                 centroid=centroid, area=area)


def sample_scene(rng: random.Random, scene_id: str, split: str, image: str) -> Scene:
    width, height = sample_size(rng)
    label = None
    free = list(positions_of(width, height))
    if rng.random() < LABEL_PROBABILITY:
        corner = rng.choice(label_places_of(width, height))
        label = _place_label_in_cell(rng, width, height, corner)
        if label is not None and corner in free:  # a line's end cell holds the label instead of a shape
            free.remove(corner)
    counts, weights = zip(*sorted(SHAPE_COUNT_WEIGHTS.items()))
    n = min(rng.choices(counts, weights=weights)[0], len(free))
    positions = rng.sample(free, n)
    pairs: List[Tuple[str, str]] = []
    while len(pairs) < n:  # colours and kinds may repeat, a (colour, kind) pair may not
        pair = (rng.choice(list(COLOURS)), rng.choice(KINDS))
        if pair not in pairs:
            pairs.append(pair)
    shapes = tuple(_place_in_cell(rng, width, height, kind, colour, rng.choice(SIZES), position)
                   for (colour, kind), position in zip(pairs, positions))
    return Scene(id=scene_id, split=split, image=image, width=width, height=height, shapes=shapes,
                 label=label)


def scene_key(scene: Scene) -> str:
    """What makes two scenes the same picture (everything but the id, split and file name)."""
    d = scene.to_dict()
    for k in ("id", "split", "image"):
        d.pop(k)
    return repr(d)

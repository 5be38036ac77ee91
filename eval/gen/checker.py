"""Rule-based checker: does a generated Shapes picture show what its prompt asked for?

    from eval.gen.checker import check_image, score_images, calibrate, detect_shapes
    found = detect_shapes(image)              # [{"colour", "kind", "position", "area", "fill", ...}, ...]
    result = check_image(image, [{"colour": "red", "kind": "circle", "position": "top"}])
    scores = score_images(images, prompts_shapes)  # colour_shape_accuracy, colour_accuracy, ...
    calibrate("data/shapes/gen_test.json")    # {"ceiling": scores on the real images, "floor": ...}

``image`` is HxWx3 uint8 (also accepted: a PIL image, float arrays/tensors in [0,1], CHW layout).

How a picture is read:
  background   the median colour of the one-pixel border;
  foreground   pixels farther from it than half the distance to the nearest palette colour;
  objects      8-connected foreground components; those under ``MIN_AREA_FRACTION`` of the image are
               noise and dropped;
  colour       the palette colour whose blend line with the background (bg -> colour) passes closest to
               the component's pixels, by majority vote (a soft edge is a blend with the background, so
               a blurred red star's median colour is nearer orange than red as a point);
  kind         the best template match: the component's mask and each kind's mask (drawn by
               ``render.shape_mask`` in a box of the component's longest side up to 3 px larger, also
               blurred and cut at half level like a soft picture, cropped to its ink) are box-resampled
               to a ``GRID`` x ``GRID`` grid over their bounding boxes and compared by soft IoU. Square,
               circle, triangle, star and cross differ in where the ink lies inside the box; their fill
               ratios alone (1.0 / 0.78 / 0.54 / 0.37 / 0.56 at 48 px) cannot tell a triangle from a cross
               (``fill`` is reported with each detection all the same);
  position     the 3x3 cell of the component's centroid (corner cells have corner names, which never
               match a prompted position).

Scores count prompted shapes: a prompted shape is matched for an attribute set when a detected component
agrees on it, each component matching at most one prompted shape (maximum bipartite matching), so two
prompted red shapes need two red components. Each attribute is scored on its own (``colour_accuracy``,
``shape_accuracy`` for the kind, ``position_accuracy`` for the cell), then in conjunctions:
``colour_shape_accuracy`` (colour AND kind), ``colour_shape_position_accuracy`` (all three on one component).
``count_accuracy`` is per image: as many components as prompted shapes. ``everything_accuracy`` is per image
and is the honest one: every prompted shape drawn with its colour, kind and position AND nothing else drawn,
so an extra blob, a missing or doubled shape, or a shape in the wrong region fails the whole prompt.
"""
from __future__ import annotations

import json
from collections import deque
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFilter

from data_pipelines.shapes.gen import gen_image_path, read_gen_json
from data_pipelines.shapes.render import shape_mask
from data_pipelines.shapes.scene import COLOURS, CORNERS, KINDS, REGIONS

__all__ = ["detect_shapes", "check_image", "verdict", "score_images", "calibrate", "to_uint8_hwc", "load_images",
           "SCORE_KEYS", "MIN_AREA_FRACTION", "GRID"]

MIN_AREA_FRACTION = 0.005   # 12 px at 48x48; the smallest large shape (a 12 px star) has 45 px
MIN_THRESHOLD = 30.0        # least RGB distance from the background that counts as foreground
GRID = 16                   # template-matching resolution (finer than a 12 px shape: no detail is lost)
TEMPLATE_SIDES = 4          # template box sizes tried per kind: the crop's longest side + 0..3 px
TEMPLATE_BLURS = (0.0, 0.7, 1.0, 1.4)   # Gaussian radii (px) the templates are also drawn with
SCORE_KEYS = ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy", "shape_accuracy",
              "position_accuracy", "colour_shape_position_accuracy", "count_accuracy", "n_images")
_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float64)  # (6, 3)
_CELL_NAMES = {cell: name for name, cell in {**REGIONS, **CORNERS}.items()}
_NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)


# ---- input -----------------------------------------------------------------------------------------------
def to_uint8_hwc(image: Any) -> np.ndarray:
    """PIL image, HxWx3 / 3xHxW array or torch tensor (uint8, or float in [0,1]) -> HxWx3 uint8."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    if hasattr(image, "detach"):  # a torch tensor, without importing torch here
        image = image.detach().float().cpu().numpy()
    a = np.asarray(image)
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"checker: expected an HxWx3 or 3xHxW image, got shape {a.shape}")
    if a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"checker: expected uint8 or float pixels, got {a.dtype}")
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def load_images(json_path: str, records: Sequence[Mapping[str, Any]]) -> List[np.ndarray]:
    """The real pictures of gen ``records`` (read from ``json_path``'s directory) as HxWx3 uint8."""
    out = []
    for r in records:
        path = gen_image_path(json_path, r)
        try:
            with Image.open(path) as im:
                out.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except OSError as e:
            raise ValueError(f"{json_path} record {r.get('id')!r}: cannot read image {path}: {e}") from None
    return out


# ---- detection -------------------------------------------------------------------------------------------
def _components(mask: np.ndarray) -> List[np.ndarray]:
    """8-connected components of a bool mask -> list of (n, 2) arrays of (y, x) pixel coordinates."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    comps = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for dy, dx in _NEIGHBOURS:
                ny, nx = y + dy, x + dx
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        comps.append(np.array(pixels, dtype=np.int64))
    return comps


def _resample(mask: np.ndarray) -> np.ndarray:
    """A bool mask cropped to its box -> GRID x GRID coverage in [0,1] (box filter, so area is kept)."""
    im = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(im.resize((GRID, GRID), Image.Resampling.BOX), dtype=np.float64) / 255.0


@lru_cache(maxsize=4096)
def _template(kind: str, side: int, blur: float) -> Optional[np.ndarray]:
    """``kind`` drawn in a ``side`` px box, blurred by ``blur`` px and cut at half level the way the
    detector cuts a picture, cropped to its ink and resampled to the grid (None when a tiny shape
    blurs away entirely)."""
    pad = 4
    canvas = Image.new("L", (side + 2 * pad, side + 2 * pad), 0)
    canvas.paste(shape_mask(kind, side), (pad, pad))
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    m = np.asarray(canvas) >= 128
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    return _resample(m[ys.min():ys.max() + 1, xs.min():xs.max() + 1])


def _kind_scores(crop: np.ndarray) -> Dict[str, float]:
    """Best soft IoU of the crop with each kind's templates. A generator's pictures are often soft, and a
    blurred picture cut at half level loses a star's tips and a square's corners, so templates are also
    drawn blurred (``TEMPLATE_BLURS``); tips shrink the ink box, and a star's ink is narrower than its
    box anyway, so boxes from the crop's longest side up to ``TEMPLATE_SIDES`` - 1 px larger are tried."""
    g = _resample(crop)
    side = max(4, *crop.shape)
    return {k: max(float(np.minimum(g, t).sum() / max(np.maximum(g, t).sum(), 1e-9))
                   for t in (_template(k, side + d, b) for d in range(TEMPLATE_SIDES) for b in TEMPLATE_BLURS)
                   if t is not None)
            for k in KINDS}


def _nearest_colour(pixels: np.ndarray, bg: np.ndarray) -> str:
    """The palette colour whose blend line with the background (bg -> colour) passes closest to the
    component's pixels, by majority vote. Edge pixels of a soft picture are blends with the background
    (a blurred red star's median is pink, nearer to orange than to red as a point), and a blend still
    lies on its own colour's line."""
    d = _PALETTE - bg                                                           # (C, 3)
    p = pixels - bg                                                             # (n, 3)
    alpha = np.clip(p @ d.T / np.maximum((d * d).sum(1), 1e-9), 0.0, 1.0)      # (n, C)
    resid = np.linalg.norm(p[:, None, :] - alpha[..., None] * d[None], axis=2)  # (n, C)
    votes = np.bincount(resid.argmin(1), minlength=len(_PALETTE))
    return _PALETTE_NAMES[int(votes.argmax())]


def background_colour(image: np.ndarray) -> np.ndarray:
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float64)  # (n, 3)
    return np.median(border, axis=0)


def detect_shapes(image: Any, min_area_fraction: float = MIN_AREA_FRACTION) -> List[Dict[str, Any]]:
    """The shapes in ``image``: one dict per kept component, largest first, with colour, kind, position,
    area (px), fill (area / bbox area), bbox (x0, y0, x1, y1; exclusive), centroid (x, y), kind_scores."""
    img = to_uint8_hwc(image)
    h, w, _ = img.shape
    bg = background_colour(img)
    # half way to the nearest palette colour; the floor keeps a background that happens to be a palette
    # colour (a bad generation) from making every pixel foreground
    threshold = max(MIN_THRESHOLD, 0.5 * float(np.min(np.linalg.norm(_PALETTE - bg, axis=1))))
    mask = np.linalg.norm(img.astype(np.float64) - bg, axis=2) > threshold  # (H, W)
    min_area = max(4, int(np.ceil(min_area_fraction * h * w)))
    found = []
    for pix in _components(mask):
        if len(pix) < min_area:
            continue
        ys, xs = pix[:, 0], pix[:, 1]
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
        crop[ys - y0, xs - x0] = True
        colour = _nearest_colour(img[ys, xs].astype(np.float64), bg)
        scores = _kind_scores(crop)
        cy, cx = float(ys.mean()) + 0.5, float(xs.mean()) + 0.5  # pixel centres
        cell = (min(2, int(3 * cy / h)), min(2, int(3 * cx / w)))
        found.append({"colour": colour, "kind": max(scores, key=scores.get), "position": _CELL_NAMES[cell],
                      "area": int(len(pix)), "fill": float(len(pix) / crop.size),
                      "bbox": (int(x0), int(y0), int(x1), int(y1)), "centroid": (cx, cy),
                      "kind_scores": scores})
    found.sort(key=lambda d: -d["area"])
    return found


# ---- matching and scores ---------------------------------------------------------------------------------
def _max_matching(n_left: int, n_right: int, ok: Callable[[int, int], bool]) -> int:
    """Size of a maximum bipartite matching (Kuhn's augmenting paths; a handful of nodes here)."""
    match_right: List[Optional[int]] = [None] * n_right

    def augment(i: int, visited: List[bool]) -> bool:
        for j in range(n_right):
            if ok(i, j) and not visited[j]:
                visited[j] = True
                if match_right[j] is None or augment(match_right[j], visited):
                    match_right[j] = i
                    return True
        return False

    return sum(augment(i, [False] * n_right) for i in range(n_left))


_CRITERIA: Dict[str, Tuple[str, ...]] = {
    "colour": ("colour",), "shape": ("kind",), "position": ("position",), "colour_shape": ("colour", "kind"),
    "colour_shape_position": ("colour", "kind", "position"),
}


def check_image(image: Any, shapes: Sequence[Mapping[str, str]],
                min_area_fraction: float = MIN_AREA_FRACTION) -> Dict[str, Any]:
    """Check one picture against its prompted ``shapes`` ([{"colour", "kind", "position"}, ...]).

    Returns {"n_prompted", "n_detected", "count": bool, "matched": {criterion: number of prompted shapes
    matched} for criteria colour, shape, position, colour_shape, colour_shape_position, "correct": {criterion:
    all matched}, "everything": bool (all matched on colour, kind and position, and no other component),
    "detected": detect_shapes(...)}."""
    if not shapes:
        raise ValueError("check_image: no prompted shapes")
    for i, s in enumerate(shapes):
        for key in ("colour", "kind", "position"):
            if key not in s:
                raise ValueError(f"check_image: prompted shapes[{i}] has no field {key!r}")
    found = detect_shapes(image, min_area_fraction)
    matched = {name: _max_matching(len(shapes), len(found),
                                   lambda i, j, keys=keys: all(shapes[i][k] == found[j][k] for k in keys))
               for name, keys in _CRITERIA.items()}
    count_ok = len(found) == len(shapes)
    return {"n_prompted": len(shapes), "n_detected": len(found), "count": count_ok,
            "matched": matched, "correct": {k: v == len(shapes) for k, v in matched.items()},
            "everything": count_ok and matched["colour_shape_position"] == len(shapes), "detected": found}


def verdict(result: Mapping[str, Any]) -> str:
    """A short verdict for one ``check_image`` result: "ok", or what failed, e.g. "colour, count 3/2"."""
    if result["everything"]:
        return "ok"
    n, fails = result["n_prompted"], []
    for name, label in (("colour", "colour"), ("shape", "kind"), ("position", "position"),
                        ("colour_shape_position", "binding")):
        if result["matched"][name] < n:
            fails.append(label)
    if not result["count"]:
        fails.append(f"count {result['n_detected']}/{n}")
    return ", ".join(fails)


def score_images(images: Sequence[Any], prompts_shapes: Sequence[Sequence[Mapping[str, str]]],
                 min_area_fraction: float = MIN_AREA_FRACTION, per_kind: bool = False) -> Dict[str, Any]:
    """Scores over a set of pictures and their prompted shapes (fractions of prompted shapes, see the
    module docstring; count_accuracy is a fraction of images). ``per_kind`` adds
    "per_kind": {kind: colour_shape accuracy over prompted shapes of that kind}."""
    if len(images) != len(prompts_shapes):
        raise ValueError(f"score_images: {len(images)} images but {len(prompts_shapes)} prompts")
    if len(images) == 0:
        raise ValueError("score_images: no images")
    totals = dict.fromkeys(_CRITERIA, 0)
    n_shapes = n_count = n_everything = 0
    kind_hits = {k: [0, 0] for k in KINDS}
    for image, shapes in zip(images, prompts_shapes):
        r = check_image(image, shapes, min_area_fraction)
        n_shapes += r["n_prompted"]
        n_count += r["count"]
        n_everything += r["everything"]
        for k in totals:
            totals[k] += r["matched"][k]
        if per_kind:
            for s in shapes:  # per shape: is this one matched on colour and kind by some component?
                kind_hits[s["kind"]][1] += 1
                kind_hits[s["kind"]][0] += any(d["colour"] == s["colour"] and d["kind"] == s["kind"]
                                               for d in r["detected"])
    out: Dict[str, Any] = {f"{k}_accuracy": totals[k] / n_shapes for k in _CRITERIA}
    out["count_accuracy"] = n_count / len(images)
    out["everything_accuracy"] = n_everything / len(images)
    out["n_images"] = len(images)
    out = {k: out[k] for k in SCORE_KEYS}
    if per_kind:
        out["per_kind"] = {k: (h / n if n else None) for k, (h, n) in kind_hits.items()}
    return out


def calibrate(gen_test_json: str, min_area_fraction: float = MIN_AREA_FRACTION) -> Dict[str, Dict[str, Any]]:
    """The checker on the real held-out pictures: "ceiling" pairs each with its own prompt (should be ~1),
    "floor" with the next record's prompt (a derangement: what a generator ignoring the prompt but drawing
    perfect Shapes pictures would score)."""
    records = read_gen_json(gen_test_json)
    if len(records) < 2:
        raise ValueError(f"{gen_test_json}: calibration needs at least 2 records, got {len(records)}")
    images = load_images(gen_test_json, records)
    shapes = [r["shapes"] for r in records]
    shifted = shapes[1:] + shapes[:1]  # i -> i+1: no record keeps its own prompt
    return {"ceiling": score_images(images, shapes, min_area_fraction, per_kind=True),
            "floor": score_images(images, shifted, min_area_fraction, per_kind=True)}


if __name__ == "__main__":  # python -m eval.gen.checker data/shapes/gen_test.json
    import sys

    print(json.dumps(calibrate(sys.argv[1]), indent=2))

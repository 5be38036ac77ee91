"""Drawing the Shapes world with PIL: flat colours, no anti-aliasing, plain background.

    mask = shape_mask("star", 40)          # "L" image, 40x40, 255 inside the shape, 0 outside
    ink = text_mask("CAT", scale=3)        # "L" image cropped to the ink of the text
    image = render_scene(scene)            # RGB PIL image of a data_pipelines.shapes.scene.Scene
    save_png(image, "x.png")

Every pixel of a rendered image is exactly the background colour, a shape's colour or the text colour:
nothing is blended. That keeps the scene metadata recoverable from pixels (a rule-based checker reads
colour, kind, position and count back), and a model sees crisp, unambiguous edges.

This module draws primitives only and knows nothing about how scenes are sampled; ``scene.py`` uses the
same masks to measure each shape's bbox, centroid and area, so metadata and pixels agree by construction.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import TYPE_CHECKING, List, Tuple

from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:  # scene.py imports this module; only the annotation needs the type
    from data_pipelines.shapes.scene import Scene

# Inner radius of the star relative to its outer radius: fatter than the classic 0.382 so that a
# small star still reads as a star after resizing.
STAR_INNER_RATIO = 0.45
# Width of the cross's arms as a fraction of its side.
CROSS_ARM_FRACTION = 1 / 3


def _star_points(side: int) -> List[Tuple[float, float]]:
    r_out = (side - 1) / 2
    r_in = r_out * STAR_INNER_RATIO
    # A 5-point star spans r_out above its centre but only r_out*cos(36 deg) below; shift it down so
    # that it fills its box vertically as evenly as the other kinds do.
    cx = (side - 1) / 2
    cy = (side - 1) / 2 + r_out * (1 - math.cos(math.pi / 5)) / 2
    points = []
    for i in range(10):
        r = r_out if i % 2 == 0 else r_in
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


@lru_cache(maxsize=2048)
def _shape_mask_cached(kind: str, side: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    last = side - 1
    if kind == "circle":
        draw.ellipse((0, 0, last, last), fill=255)
    elif kind == "square":
        draw.rectangle((0, 0, last, last), fill=255)
    elif kind == "triangle":
        draw.polygon([(0, last), (last, last), (last / 2, 0)], fill=255)
    elif kind == "star":
        draw.polygon(_star_points(side), fill=255)
    elif kind == "cross":
        arm0 = round(side * (1 - CROSS_ARM_FRACTION) / 2)
        arm1 = last - arm0
        draw.rectangle((arm0, 0, arm1, last), fill=255)
        draw.rectangle((0, arm0, last, arm1), fill=255)
    else:
        raise ValueError(f"render.shape_mask: unknown shape kind {kind!r} "
                         "(known: circle, square, triangle, star, cross)")
    return mask


def shape_mask(kind: str, side: int) -> Image.Image:
    """A ``side`` x ``side`` "L" mask of one shape: 255 inside, 0 outside (a copy; safe to modify)."""
    if side < 4:
        raise ValueError(f"render.shape_mask: side must be at least 4 px, got {side}")
    return _shape_mask_cached(kind, int(side)).copy()


@lru_cache(maxsize=256)
def _text_mask_cached(text: str, scale: int) -> Image.Image:
    # PIL's bitmap default font has no anti-aliasing, so scaling its mask with NEAREST keeps the text
    # one flat colour at any size (a FreeType font would blend its edges into the background).
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    canvas = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(canvas).text((1 - left, 1 - top), text, font=font, fill=255)
    canvas = canvas.point(lambda v: 255 if v >= 128 else 0)
    ink = canvas.crop(canvas.getbbox())
    return ink.resize((ink.width * scale, ink.height * scale), Image.Resampling.NEAREST)


def text_mask(text: str, scale: int = 1) -> Image.Image:
    """An "L" mask of ``text`` in PIL's default bitmap font, cropped to its ink and scaled by ``scale``."""
    if not text or scale < 1:
        raise ValueError(f"render.text_mask: need non-empty text and scale >= 1, got {text!r}, {scale}")
    return _text_mask_cached(text, int(scale)).copy()


def render_scene(scene: "Scene") -> Image.Image:
    """Draw ``scene`` as an RGB image of size (scene.width, scene.height)."""
    image = Image.new("RGB", (scene.width, scene.height), tuple(scene.background))
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box
        image.paste(shape.rgb, (x0, y0, x1, y1), shape_mask(shape.kind, x1 - x0))
    if scene.label is not None:
        label = scene.label
        x0, y0, x1, y1 = label.box
        image.paste(tuple(label.rgb), (x0, y0, x1, y1), text_mask(label.text, label.scale))
    return image


def save_png(image: Image.Image, path: str) -> None:
    # Fixed options and no metadata chunks: the same image gives the same bytes on every run.
    image.save(path, format="PNG", optimize=False, compress_level=6)

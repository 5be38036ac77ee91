"""Robust image loading: any source -> an upright RGB PIL image, or an ``ImageLoadError`` that says why.

    from data_pipelines.images import load_image, ImageLoadError
    img = load_image("data/cat.jpg")                  # path (str or os.PathLike)
    img = load_image(raw_bytes)                       # bytes / bytearray / memoryview, e.g. a parquet cell
    img = load_image(open("x.png", "rb"))             # any binary file object (not closed for you)
    img = load_image(pil_image, max_pixels=10**8)     # a PIL image (EXIF orientation and mode still fixed)

What it guarantees:
- EXIF orientation is applied (phone photos come out upright).
- Every mode becomes RGB by one rule (:func:`to_rgb`): transparency (RGBA, LA, PA, palette or RGB/L with a
  transparency key, premultiplied RGBa/La) is composited on white, as transformers' ``convert_to_rgb``
  does; 16-bit and 32-bit integer greyscale ('I;16*', 'I') is scaled from 0..65535 to 0..255 (rounded)
  instead of being clipped to white; CMYK, YCbCr, HSV, '1', 'L', 'P', 'F' go through PIL's conversion.
- width * height is checked against ``max_pixels`` from the header, *before* any pixel is decoded.
- Any failure raises ``ImageLoadError`` (a ``ValueError``) naming the file (or ``<bytes>``) and the reason.
"""
from __future__ import annotations

import io
import os
import re
import threading
import warnings
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mllm.constants import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]

# PIL refuses images over twice its global limit inside Image.open; when a caller allows more than that we
# lift the global for the duration of one header parse (serialised between our callers; other code opening
# an image at that instant would see the raised limit too, which is why this is only done on request).
_PIL_LIMIT_LOCK = threading.Lock()
_PIL_BOMB_RE = re.compile(r"\((\d+) pixels\)")
_EXIF_ORIENTATION = 0x0112
# Modes with a real alpha band. Not "A" in getbands(): LAB's bands are L, A, B and it has no alpha.
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageLoadError(ValueError):
    """An image could not be loaded. ``source`` names the file (or ``<bytes>``), ``reason`` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def load_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Load ``source`` as an upright RGB image; raise ``ImageLoadError`` on any problem.

    A PIL image passed in is never modified; it is returned as is when already upright RGB.
    """
    name = _source_name(source)
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive integer, got {max_pixels!r}")
    owned = not isinstance(source, Image.Image)
    image = _open(source, name, max_pixels) if owned else source
    _check_pixels(image, name, max_pixels)
    try:
        image.load()  # decode now, so corrupt data fails here with the file's name
        if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
            transposed = ImageOps.exif_transpose(image, in_place=owned)
            image = image if owned else transposed
        return to_rgb(image, name)
    except ImageLoadError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # PIL signals truncated/corrupt streams with all of these, depending on the codec
        raise ImageLoadError(name, f"truncated or corrupt image data ({type(e).__name__}: {e})") from e


def to_rgb(image: Image.Image, name: str | None = None) -> Image.Image:
    """Convert any PIL mode to RGB by the rule in the module docstring.

    Returns ``image`` itself when it is already RGB without a transparency key. ``name`` is used in the
    error message when a mode cannot be converted.
    """
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        image = _high_bit_depth_to_8bit(image)
        mode = image.mode
    if mode in _ALPHA_MODES or image.info.get("transparency") is not None:
        if mode == "La":
            image = image.convert("LA")  # PIL has no direct La -> RGBA path
        rgba = image.convert("RGBA")  # un-premultiplies RGBa and expands palette transparency
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except ValueError as e:
        raise ImageLoadError(name or _source_name(image), f"cannot convert mode {mode!r} to RGB ({e})") from e


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    # PIL opens 16-bit PNG/TIFF greyscale as 'I;16*' (or 'I'), whose samples span 0..65535; PIL's own
    # convert("L") clips them at 255 (almost everything turns white), so scale instead.
    arr = np.asarray(image).astype(np.int64)  # (H, W)
    arr8 = ((np.clip(arr, 0, 65535) * 255 + 32767) // 65535).astype(np.uint8)
    out = Image.fromarray(arr8, mode="L")
    key = image.info.get("transparency")
    if isinstance(key, int):  # a grey transparency key refers to 16-bit values: turn it into an alpha band
        alpha = np.where(arr == key, 0, 255).astype(np.uint8)
        out = Image.merge("LA", (out, Image.fromarray(alpha, mode="L")))
    return out


def _source_name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, Image.Image):
        filename = getattr(source, "filename", None)
        return filename if isinstance(filename, str) and filename else "<PIL image>"
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<file object>"


def _open(source: ImageSource, name: str, max_pixels: int) -> Image.Image:
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as f:
                # Read the compressed bytes up front so the returned image holds no open file handle.
                stream: BinaryIO = io.BytesIO(f.read())
        except FileNotFoundError:
            raise ImageLoadError(name, "file not found") from None
        except IsADirectoryError:
            raise ImageLoadError(name, "is a directory, not an image file") from None
        except OSError as e:
            raise ImageLoadError(name, f"cannot read file ({e.strerror or e})") from None
    elif isinstance(source, (bytes, bytearray, memoryview)):
        stream = io.BytesIO(bytes(source))
    elif hasattr(source, "read"):
        stream = source  # type: ignore[assignment]
    else:
        raise ImageLoadError(name, f"unsupported image source type {type(source).__name__} (expected a path, "
                                   f"bytes, a binary file object or a PIL image)")
    if stream is not source and len(stream.getbuffer()) == 0:  # type: ignore[attr-defined]
        raise ImageLoadError(name, "empty file (0 bytes)")
    try:
        return _open_header(stream, max_pixels)
    except Image.DecompressionBombError as e:
        match = _PIL_BOMB_RE.search(str(e))
        pixels = int(match.group(1)) if match else None
        raise ImageLoadError(name, _too_many_pixels(pixels, max_pixels)) from None
    except UnidentifiedImageError:
        kind = _sniff(stream)
        if kind:  # the magic number is right, so the file is damaged rather than of an unknown type
            raise ImageLoadError(name, f"truncated or corrupt {kind} data (PIL cannot parse its header)") \
                from None
        raise ImageLoadError(name, "not a recognised image format (garbage or unsupported data)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageLoadError(name, f"truncated or corrupt image header ({type(e).__name__}: {e})") from None


_MAGIC = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
          (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"RIFF", "RIFF/WebP"), (b"BM", "BMP"))


def _sniff(stream: BinaryIO) -> str | None:
    try:
        stream.seek(0)  # where Image.open reads from too
        head = stream.read(16)
    except (OSError, ValueError, AttributeError):
        return None
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)), None)


def _open_header(stream: BinaryIO, max_pixels: int) -> Image.Image:
    """Image.open (reads the header only); our own max_pixels decides, not PIL's global limit."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        # We check width*height against max_pixels ourselves; PIL's warning would be noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if pil_limit is None or max_pixels <= 2 * pil_limit:
            return Image.open(stream)
        with _PIL_LIMIT_LOCK:
            Image.MAX_IMAGE_PIXELS = max_pixels
            try:
                return Image.open(stream)
            finally:
                Image.MAX_IMAGE_PIXELS = pil_limit


def _check_pixels(image: Image.Image, name: str, max_pixels: int) -> None:
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageLoadError(name, f"image has no pixels (size {width}x{height})")
    if width * height > max_pixels:
        raise ImageLoadError(name, _too_many_pixels(width * height, max_pixels, (width, height)))


def _too_many_pixels(pixels: int | None, max_pixels: int, wh: tuple[int, int] | None = None) -> str:
    size = f"{wh[0]}x{wh[1]} = " if wh else ""
    count = f"{size}{pixels:,} pixels" if pixels is not None else "too many pixels"
    return (f"{count} exceeds max_pixels={max_pixels:,} (decompression-bomb guard); if the image is "
            f"legitimate, raise the limit with load_image(..., max_pixels=N) or the config field "
            f"image.max_pixels")

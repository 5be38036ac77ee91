"""load_image: every source kind, every awkward mode, EXIF orientation, and every way a file can be bad.

All images are generated with PIL in tmp dirs; nothing is downloaded.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines.images import ImageLoadError, load_image, to_rgb


def _save(image: Image.Image, path, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    data = buf.getvalue()
    path.write_bytes(data)
    return data


def _quadrants(w: int, h: int) -> Image.Image:
    """Top-left red, top-right green, bottom-left blue, bottom-right white: orientation is visible."""
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (255, 0, 0)
    arr[: h // 2, w // 2:] = (0, 255, 0)
    arr[h // 2:, : w // 2] = (0, 0, 255)
    arr[h // 2:, w // 2:] = (255, 255, 255)
    return Image.fromarray(arr, "RGB")


def _close(pixel, expected, tol=8):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


# ---- sources -----------------------------------------------------------------------------------------------
def test_every_source_kind_gives_the_same_rgb_image(tmp_path):
    image = _quadrants(20, 10)
    data = _save(image, tmp_path / "q.png", "PNG")
    ref = np.asarray(image)
    with open(tmp_path / "q.png", "rb") as f:
        from_file = load_image(f)
        assert not f.closed  # the caller's file object is left to the caller
    for loaded in [load_image(str(tmp_path / "q.png")), load_image(tmp_path / "q.png"), load_image(data),
                   load_image(bytearray(data)), load_image(memoryview(data)), from_file, load_image(image)]:
        assert loaded.mode == "RGB" and loaded.size == (20, 10)
        assert np.array_equal(np.asarray(loaded), ref)


def test_invalid_max_pixels():
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        load_image(b"whatever", max_pixels=0)


def test_one_by_one_image(tmp_path):
    _save(Image.new("RGB", (1, 1), (10, 20, 30)), tmp_path / "one.png", "PNG")
    image = load_image(tmp_path / "one.png")
    assert image.size == (1, 1) and image.getpixel((0, 0)) == (10, 20, 30)


# ---- modes -------------------------------------------------------------------------------------------------
def test_cmyk_jpeg_becomes_rgb(tmp_path):
    cmyk = _quadrants(32, 32).convert("CMYK")
    _save(cmyk, tmp_path / "cmyk.jpg", "JPEG", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    image = load_image(tmp_path / "cmyk.jpg")
    assert image.mode == "RGB"
    assert _close(image.getpixel((4, 4)), (255, 0, 0)) and _close(image.getpixel((28, 28)), (255, 255, 255))


def test_rgba_png_is_composited_on_white(tmp_path):
    arr = np.zeros((4, 4, 4), np.uint8)
    arr[..., 0] = 200            # red channel everywhere
    arr[0, 0, 3] = 0             # fully transparent -> white
    arr[0, 1, 3] = 255           # opaque -> the colour itself
    arr[0, 2, 3] = 128           # half -> halfway to white
    _save(Image.fromarray(arr, "RGBA"), tmp_path / "rgba.png", "PNG")
    image = load_image(tmp_path / "rgba.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 0)) == (200, 0, 0)
    assert _close(image.getpixel((2, 0)), (228, 127, 127), tol=2)


def test_la_and_palette_with_transparency_are_composited_on_white(tmp_path):
    alpha = np.array([[0, 255], [255, 255]], np.uint8)
    la = Image.fromarray(np.dstack([np.full((2, 2), 50, np.uint8), alpha]), "LA")
    _save(la, tmp_path / "la.png", "PNG")
    image = load_image(tmp_path / "la.png")
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((1, 0)) == (50, 50, 50)

    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 6))
    pal.putdata([0, 1, 1])
    _save(pal, tmp_path / "pal.png", "PNG", transparency=0)
    loaded = Image.open(tmp_path / "pal.png")
    assert loaded.mode == "P" and loaded.info.get("transparency") == 0
    image = load_image(tmp_path / "pal.png")
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)  # the transparent index, not black
    assert image.getpixel((1, 0)) == (0, 128, 255)


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 64, 257 * 128, 65535]], dtype=np.uint16)
    _save(Image.fromarray(arr), tmp_path / "g16.png", "PNG")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    image = load_image(tmp_path / "g16.png")
    assert image.mode == "RGB"
    # clipping would give 0, 255, 255, 255
    greys = [image.getpixel((x, 0)) for x in range(4)]
    assert greys == [(0, 0, 0), (64, 64, 64), (128, 128, 128), (255, 255, 255)]


def test_32_bit_integer_image_is_scaled_as_16_bit():
    image = to_rgb(Image.fromarray(np.array([[0, 257 * 100, 70000, -5]], dtype=np.int32), "I"))
    assert [image.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 255, 0]


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBX", "YCbCr", "F", "HSV", "LAB"])
def test_other_modes_become_rgb(mode):
    source = _quadrants(8, 8).convert("L" if mode == "F" else mode)
    source = source.convert("F") if mode == "F" else source
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (8, 8)
    if mode in ("L", "F"):
        assert image.getpixel((0, 0))[0] == image.getpixel((0, 0))[2]  # grey stays grey
    if mode in ("P", "RGBX", "YCbCr"):
        assert _close(image.getpixel((0, 0)), (255, 0, 0))


def test_lab_is_not_mistaken_for_alpha():
    # LAB's bands are named L, A, B: the "A" is a colour axis, not transparency
    lab = _quadrants(8, 8).convert("LAB")
    assert lab.getbands() == ("L", "A", "B")
    assert _close(to_rgb(lab).getpixel((7, 7)), (255, 255, 255))
    assert _close(to_rgb(lab).getpixel((0, 7)), (0, 0, 255), tol=30)


# ---- EXIF orientation --------------------------------------------------------------------------------------
@pytest.mark.parametrize("orientation,expected_size,top_left,top_right", [
    (1, (40, 20), (255, 0, 0), (0, 255, 0)),        # as stored
    (3, (40, 20), (255, 255, 255), (0, 0, 255)),    # rotated 180
    (6, (20, 40), (0, 0, 255), (255, 0, 0)),        # camera turned: rotate 90 clockwise to display
    (8, (20, 40), (0, 255, 0), (255, 255, 255)),    # rotate 90 counter-clockwise
    (2, (40, 20), (0, 255, 0), (255, 0, 0)),        # mirrored
])
def test_exif_orientation_is_applied(tmp_path, orientation, expected_size, top_left, top_right):
    stored = _quadrants(40, 20)
    exif = Image.Exif()
    exif[0x0112] = orientation
    _save(stored, tmp_path / "photo.jpg", "JPEG", exif=exif, quality=95)
    image = load_image(tmp_path / "photo.jpg")
    w, h = image.size
    assert (w, h) == expected_size
    assert _close(image.getpixel((2, 2)), top_left)
    assert _close(image.getpixel((w - 3, 2)), top_right)
    assert image.getexif().get(0x0112, 1) == 1  # the tag is consumed, not applied twice downstream


def test_a_pil_image_passed_in_is_not_modified(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    _save(_quadrants(40, 20), tmp_path / "photo.jpg", "JPEG", exif=exif)
    original = Image.open(tmp_path / "photo.jpg")
    upright = load_image(original)
    assert upright.size == (20, 40) and original.size == (40, 20) and original.mode == "RGB"
    rgb = Image.new("RGB", (3, 3))
    assert load_image(rgb) is rgb  # nothing to do: no copy


# ---- failures ----------------------------------------------------------------------------------------------
def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match=r"nope\.jpg: file not found") as e:
        load_image(path)
    assert isinstance(e.value, ValueError) and e.value.source == str(path)
    with pytest.raises(ImageLoadError, match="is a directory"):
        load_image(tmp_path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_names_the_file(tmp_path, fmt):
    data = _save(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)),
                 tmp_path / "full", fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=rf"cut\.{fmt.lower()}: truncated or corrupt image data"):
        load_image(path)
    with pytest.raises(ImageLoadError, match=r"^<bytes>: truncated or corrupt"):
        load_image(data[:60])


def test_garbage_and_empty_bytes():
    with pytest.raises(ImageLoadError, match=r"^<bytes>: not a recognised image format"):
        load_image(b"\x00\x01 definitely not an image" * 20)
    with pytest.raises(ImageLoadError, match=r"^<bytes>: empty file"):
        load_image(b"")
    with pytest.raises(ImageLoadError, match="unsupported image source type int"):
        load_image(42)  # type: ignore[arg-type]


def test_bomb_over_max_pixels_is_refused_with_numbers_and_the_way_out(tmp_path):
    _save(Image.new("RGB", (100, 60)), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageLoadError) as e:
        load_image(tmp_path / "big.png", max_pixels=5000)
    msg = str(e.value)
    assert "big.png" in msg and "100x60 = 6,000 pixels" in msg and "max_pixels=5,000" in msg
    assert "max_pixels=N" in msg and "image.max_pixels" in msg
    assert load_image(tmp_path / "big.png", max_pixels=6000).size == (100, 60)  # the limit is inclusive


def _png_without_pixels(width: int, height: int) -> bytes:
    """A greyscale PNG whose header says width x height, followed by a few bytes of broken pixel data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x78\x9c\x00\x01")


def test_pixel_limit_is_checked_before_decoding(monkeypatch):
    # The pixel data is broken: decoding fails as "truncated or corrupt". Getting the pixel-limit error
    # instead proves the size was checked from the header, before decoding.
    with pytest.raises(ImageLoadError, match="truncated or corrupt image data"):
        load_image(_png_without_pixels(50, 50))
    with pytest.raises(ImageLoadError, match="50x50 = 2,500 pixels exceeds max_pixels=1,000"):
        load_image(_png_without_pixels(50, 50), max_pixels=1000)
    # Far over PIL's own limit: PIL refuses at the header; we still report the pixel count and our limit
    with pytest.raises(ImageLoadError, match="10,000,000,000 pixels exceeds max_pixels=89,478,485"):
        load_image(_png_without_pixels(100_000, 100_000))


def test_max_pixels_above_pils_global_limit_is_honoured(monkeypatch, tmp_path):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone refuses > 2,000 pixels at open
    _save(_quadrants(50, 50), tmp_path / "q.png", "PNG")
    assert load_image(tmp_path / "q.png", max_pixels=1_000_000).size == (50, 50)
    assert Image.MAX_IMAGE_PIXELS == 1000  # PIL's global is restored
    with pytest.raises(ImageLoadError, match="2,500 pixels exceeds max_pixels=2,400"):
        load_image(tmp_path / "q.png", max_pixels=2400)


def test_truncated_png_header_is_reported_as_damaged_not_unknown():
    # signature + IHDR and nothing else: PIL cannot identify it, but the PNG magic says it is damaged
    with pytest.raises(ImageLoadError, match=r"^<bytes>: truncated or corrupt PNG data"):
        load_image(_png_without_pixels(4, 4)[:33])
    with pytest.raises(ImageLoadError, match=r"^<bytes>: truncated or corrupt image header"):
        load_image(_png_without_pixels(4, 4)[:20])

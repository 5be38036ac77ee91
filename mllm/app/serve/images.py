"""``image_url`` parts -> PIL images, within the operator's limits.

    policy = ImagePolicy(max_bytes=10 << 20, max_pixels=16 << 20, local_dir=None, allow_remote=False)
    image = fetch_image("data:image/png;base64,iVBOR...", policy, param="messages.0.content.0.image_url")

- ``data:`` URLs with base64 PNG, JPEG or WebP: the size is checked before decoding the base64, the
  format from the bytes themselves (not the declared type), the pixel count from the header before any
  pixel is decoded (``data_pipelines.images.load_image``: decompression bombs never allocate).
- ``file://`` URLs only under ``local_dir`` (the real path, symlinks resolved, must stay inside it).
- ``http(s)://`` only with ``allow_remote``: the server makes no outbound request unless told to.
Anything else is an ``APIError`` (400) naming the part.
"""
from __future__ import annotations

import base64
import binascii
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Optional

from data_pipelines.images import ImageLoadError, load_image

from .protocol import APIError

MIME_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp")


@dataclass
class ImagePolicy:
    max_bytes: int = 10 << 20  # per image, decoded
    max_pixels: int = 1 << 24  # width * height, from the header
    local_dir: Optional[str] = None  # file:// URLs allowed under this directory
    allow_remote: bool = False  # http(s):// URLs fetched
    remote_timeout_s: float = 10.0


def sniff_format(data: bytes) -> Optional[str]:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def fetch_image(url: str, policy: ImagePolicy, param: str):
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _data_url_bytes(url, policy, param)
    elif scheme == "file":
        data = _local_bytes(url, policy, param)
    elif scheme in ("http", "https"):
        data = _remote_bytes(url, policy, param)
    else:
        raise APIError(400, f"{param}: unsupported image URL (expected a data:image/...;base64 URL"
                            f"{', a file:// URL' if policy.local_dir else ''}"
                            f"{' or an http(s) URL' if policy.allow_remote else ''})", param=param,
                       code="invalid_image_url")
    if sniff_format(data) is None:
        raise APIError(400, f"{param}: not a PNG, JPEG or WebP image (first bytes {data[:8]!r})", param=param,
                       code="invalid_image")
    try:
        return load_image(data, max_pixels=policy.max_pixels)
    except ImageLoadError as e:
        raise APIError(400, f"{param}: {e.reason}", param=param, code="invalid_image") from None


def _too_large(param: str, size: int, policy: ImagePolicy) -> APIError:
    return APIError(400, f"{param}: the image is {size} bytes, over this server's limit of {policy.max_bytes} "
                         f"bytes per image", param=param, code="image_too_large")


def _data_url_bytes(url: str, policy: ImagePolicy, param: str) -> bytes:
    header, sep, payload = url[5:].partition(",")
    if not sep:
        raise APIError(400, f"{param}: a data URL needs a comma before its data", param=param,
                       code="invalid_image_url")
    fields = [f.strip().lower() for f in header.split(";")]
    if "base64" not in fields[1:]:
        raise APIError(400, f"{param}: only base64 data URLs are accepted (data:image/png;base64,...)",
                       param=param, code="invalid_image_url")
    if fields[0] not in MIME_TYPES:
        raise APIError(400, f"{param}: unsupported image type {fields[0] or '(none)'!r} (PNG, JPEG or WebP)",
                       param=param, code="invalid_image")
    payload = payload.strip()
    if len(payload) // 4 * 3 > policy.max_bytes + 2:  # decoded size, known before decoding
        raise _too_large(param, len(payload) // 4 * 3, policy)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise APIError(400, f"{param}: the data URL is not valid base64 ({e})", param=param,
                       code="invalid_image_url") from None
    if len(data) > policy.max_bytes:
        raise _too_large(param, len(data), policy)
    return data


def _local_bytes(url: str, policy: ImagePolicy, param: str) -> bytes:
    if not policy.local_dir:
        raise APIError(400, f"{param}: file:// image URLs are disabled on this server (the operator allows a "
                            f"directory with --allow-local-images DIR)", param=param, code="local_images_disabled")
    parsed = urllib.parse.urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise APIError(400, f"{param}: file URL with a host ({parsed.netloc!r})", param=param,
                       code="invalid_image_url")
    root = os.path.realpath(policy.local_dir)
    path = os.path.realpath(urllib.request.url2pathname(parsed.path))
    if os.path.commonpath([root, path]) != root:
        raise APIError(400, f"{param}: {parsed.path} is outside the directory this server may read images from",
                       param=param, code="local_image_forbidden")
    if not os.path.isfile(path):
        raise APIError(400, f"{param}: no such file {parsed.path}", param=param, code="invalid_image_url")
    size = os.path.getsize(path)
    if size > policy.max_bytes:
        raise _too_large(param, size, policy)
    with open(path, "rb") as f:
        return f.read(policy.max_bytes + 1)


def _remote_bytes(url: str, policy: ImagePolicy, param: str) -> bytes:
    if not policy.allow_remote:
        raise APIError(400, f"{param}: remote image URLs are disabled on this server (it fetches nothing unless "
                            f"started with --allow-remote-images); send the image as a data URL",
                       param=param, code="remote_images_disabled")
    try:
        with urllib.request.urlopen(url, timeout=policy.remote_timeout_s) as resp:  # noqa: S310 - scheme checked
            declared = resp.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                raise _too_large(param, int(declared), policy)
            data = resp.read(policy.max_bytes + 1)
    except APIError:
        raise
    except Exception as e:  # noqa: BLE001 - any network failure is the request's problem, not the server's
        raise APIError(400, f"{param}: could not fetch {url} ({type(e).__name__}: {e})", param=param,
                       code="image_fetch_failed") from None
    if len(data) > policy.max_bytes:
        raise _too_large(param, len(data), policy)
    return data

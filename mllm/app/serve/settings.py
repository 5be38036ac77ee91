"""What the operator decides about a server: address, key, batching, queue, timeouts, input limits.

    settings = ServeSettings(port=8000, api_key="secret", max_batch_size=8, allow_local_images="/data/img")

``mllm serve`` / ``mllm web`` build one from their flags (same names, dashes for underscores).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

MiB = 1 << 20


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None  # checked on every API route (not /health)
    served_model_name: Optional[str] = None  # default: the model directory's name
    max_batch_size: int = 8  # requests sharing one generate call
    batch_wait_ms: float = 5.0  # how long the worker collects requests before starting a batch
    max_queue: int = 64  # requests waiting beyond this get a 503
    request_timeout_s: float = 300.0  # a request (waiting + generating) past this is cancelled, 504
    default_max_tokens: int = 256  # answer budget when the request gives none
    max_images: int = 4  # image parts per request
    max_image_bytes: int = 10 * MiB
    max_image_pixels: int = 1 << 24  # 16.7 M pixels, from the header (the model's own limit applies too)
    max_request_bytes: int = 64 * MiB
    allow_local_images: Optional[str] = None  # a directory file:// image URLs may point into
    allow_remote_images: bool = False  # fetch http(s) image URLs (off: no outbound requests)

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "default_max_tokens", "max_image_bytes", "max_image_pixels",
                     "max_request_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.max_images < 0 or self.batch_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("--max-images and --batch-wait-ms must be >= 0 and --request-timeout-s > 0")
        if self.allow_local_images is not None and not os.path.isdir(self.allow_local_images):
            raise ValueError(f"--allow-local-images {self.allow_local_images!r} is not a directory")

    def limits(self, model):
        """The per-request input limits (``prepare.Limits``) for ``model``."""
        from .images import ImagePolicy  # lazily: the CLI reads these defaults without loading torch
        from .prepare import Limits  # lazily: the CLI reads these defaults without loading torch

        policy = ImagePolicy(max_bytes=self.max_image_bytes, max_pixels=min(self.max_image_pixels, model.max_pixels),
                             local_dir=self.allow_local_images, allow_remote=self.allow_remote_images)
        return Limits(max_images=self.max_images if model.accepts_images else 0,
                      default_max_tokens=self.default_max_tokens, images=policy)

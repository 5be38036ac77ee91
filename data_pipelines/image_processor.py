"""AnyRes image preprocessing: PIL images -> normalised tiles, pixel-identical to transformers.

    proc = AnyResImageProcessor(336, [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]])
    tiles, (h, w) = proc.process(image)          # (T, 3, 336, 336) float32, T = anyres.num_tiles(...)
    batch = proc([img1, img2])                   # pixel_values (N, T_max, 3, S, S), image_sizes, num_tiles
    proc = AnyResImageProcessor.from_config(model_config)   # tile size, pinpoints, mean/std from the config

AnyRes (pinpoints given): tile 0 is the whole image squashed to S x S; then the image is resized to fit
the best pinpoint canvas (``mllm.anyres.select_best_resolution`` / ``fit_size``), centred on it with black
padding and cut into S x S tiles row by row. Output equals transformers' ``LlavaNextImageProcessorPil``
(size={"shortest_edge": S}, crop_size=S, same pinpoints, mean, std, do_pad=True) exactly: same PIL bicubic
resizes, and the rescale/normalise is done in float32 in the same order, so the floats are bit-equal.

Fixed resolution (no pinpoints, LLaVA-1.5): one tile, the shortest edge resized to S then centre-cropped,
equal to transformers' ``CLIPImageProcessorPil`` (what a LLaVA-1.5 checkpoint ships with).

Speed: each resize is done once, straight from the PIL image; the tiles are a strided view of one padded
uint8 canvas, cast to float32 once straight into the output (the batch array itself in ``__call__``) and
normalised in place. The work is PIL + numpy only, both of which release the GIL, so the two resizes of an
image (and the images of a batch) run on a small thread pool; inside DataLoader workers everything runs
inline (the workers are the parallelism there). ``benchmarks/anyres_preprocess.py`` measures it against
transformers.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from data_pipelines.images import to_rgb
from mllm import anyres
from mllm.constants import CLIP_MEAN, CLIP_STD

_BICUBIC = Image.Resampling.BICUBIC


class AnyResImageProcessor:
    """Tiles and normalises images for the vision tower (see the module docstring).

    Args:
        tile_size: S, the tower's square input size.
        grid_pinpoints: [h, w] canvases (multiples of S); empty/None = fixed resolution.
        image_mean, image_std: per-channel RGB normalisation on the 0-1 scale.
        num_threads: threads for resizing (None = min(4, cpus); 1 = none).
    """

    def __init__(self, tile_size: int, grid_pinpoints: Optional[Sequence[Sequence[int]]] = None,
                 image_mean: Sequence[float] = CLIP_MEAN, image_std: Sequence[float] = CLIP_STD, *,
                 num_threads: Optional[int] = None):
        if isinstance(tile_size, bool) or not isinstance(tile_size, int) or tile_size <= 0:
            raise ValueError(f"tile_size must be a positive integer, got {tile_size!r}")
        self.tile_size = tile_size
        self.grid_pinpoints: List[Tuple[int, int]] = anyres.check_pinpoints(grid_pinpoints, tile_size)
        self.image_mean = _channel_triple(image_mean, "image_mean")
        self.image_std = _channel_triple(image_std, "image_std")
        if min(self.image_std) <= 0:
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        # float32 like transformers' numpy normalise, so results are bit-equal
        self._mean = np.array(self.image_mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.array(self.image_std, dtype=np.float32).reshape(3, 1, 1)
        if num_threads is None:
            num_threads = min(4, os.cpu_count() or 1)
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_pid = -1

    @classmethod
    def from_config(cls, model_config: Any, tile_size: Optional[int] = None,
                    **kwargs: Any) -> "AnyResImageProcessor":
        """Build from a ``mllm.config.ModelConfig``: ``anyres`` (enabled, grid_pinpoints) and ``image``
        (size, mean, std). ``tile_size`` overrides ``image.size`` (pass the tower's image_size when unset)."""
        size = tile_size if tile_size is not None else model_config.image.size
        if size is None:
            raise ValueError("config field image.size is not set; pass tile_size= (the vision tower's "
                             "image_size) to AnyResImageProcessor.from_config")
        pins: List[List[int]] = []
        if model_config.anyres.enabled:
            pins = model_config.anyres.grid_pinpoints
            if not pins:
                raise ValueError("config field anyres.enabled is true but anyres.grid_pinpoints is empty")
        try:
            return cls(size, pins, model_config.image.mean, model_config.image.std, **kwargs)
        except ValueError as e:
            raise ValueError(f"image processor from config (image.size={size}, anyres.grid_pinpoints="
                             f"{pins}): {e}") from None

    @property
    def fixed_resolution(self) -> bool:
        return not self.grid_pinpoints

    def num_tiles(self, image_hw: Sequence[int]) -> int:
        return anyres.num_tiles(image_hw, self.grid_pinpoints, self.tile_size)

    # ---- public entry points -------------------------------------------------------------------------
    def process(self, image: Image.Image) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """One image -> (tiles (T, 3, S, S) float32, (height, width) of the image)."""
        image = self._prepare(image, 0)
        hw = (image.height, image.width)
        S = self.tile_size
        tiles = np.empty((self.num_tiles(hw), 3, S, S), dtype=np.float32)
        self._fill(image, tiles, self._executor())
        return torch.from_numpy(tiles), hw

    def __call__(self, images: Sequence[Image.Image]) -> Dict[str, torch.Tensor]:
        """A batch -> {"pixel_values": (N, T_max, 3, S, S) zero-padded on T, "image_sizes": (N, 2) long,
        "num_tiles": (N,) long}."""
        if isinstance(images, Image.Image):
            images = [images]
        images = [self._prepare(im, i) for i, im in enumerate(images)]
        if not images:
            raise ValueError("AnyResImageProcessor got an empty list of images")
        sizes = [(im.height, im.width) for im in images]
        counts = [self.num_tiles(hw) for hw in sizes]
        S = self.tile_size
        pixel_values = np.empty((len(images), max(counts), 3, S, S), dtype=np.float32)
        outs = []
        for i, n in enumerate(counts):
            pixel_values[i, n:] = 0  # padding tiles; the others are written by _fill
            outs.append(pixel_values[i, :n])
        pool = self._executor()
        if pool is None or len(images) == 1:
            for im, out in zip(images, outs):
                self._fill(im, out, pool)
        else:
            # one image per task, its resizes inline (a task waiting on its own pool could deadlock it)
            for _ in pool.map(self._fill, images, outs, [None] * len(images)):
                pass
        return {"pixel_values": torch.from_numpy(pixel_values),
                "image_sizes": torch.tensor(sizes, dtype=torch.long),
                "num_tiles": torch.tensor(counts, dtype=torch.long)}

    # ---- internals ---------------------------------------------------------------------------------------
    # Pure PIL + numpy on purpose: both release the GIL, so the thread pool really runs in parallel, and
    # torch's OpenMP threads (which spin-wait after each op and starve concurrent threads on small
    # machines) are never woken.
    def _prepare(self, image: Any, index: int) -> Image.Image:
        if not isinstance(image, Image.Image):
            raise ValueError(f"image {index}: expected a PIL image, got {type(image).__name__} "
                             f"(load files with data_pipelines.images.load_image)")
        if image.width <= 0 or image.height <= 0:
            raise ValueError(f"image {index}: has no pixels (size {image.width}x{image.height})")
        return to_rgb(image)

    def _fill(self, image: Image.Image, out: np.ndarray, pool: Optional[ThreadPoolExecutor]) -> None:
        """Write the normalised tiles of ``image`` into ``out`` (T, 3, S, S) float32, C-contiguous."""
        S = self.tile_size
        h, w = image.height, image.width
        if self.fixed_resolution:
            nh, nw = _shortest_edge_size((h, w), S)
            top, left = (nh - S) // 2, (nw - S) // 2
            resized = np.asarray(_pil_resize(image, nh, nw))  # (nh, nw, 3) uint8
            out[0] = resized[top:top + S, left:left + S].transpose(2, 0, 1)  # centre crop -> (3, S, S) float
            self._normalize(out)
            return
        base = pool.submit(self._fill_base, image, out[0]) if pool is not None else None
        bh, bw = anyres.select_best_resolution((h, w), self.grid_pinpoints)
        rows, cols = bh // S, bw // S
        nh, nw = anyres.fit_size((h, w), (bh, bw))
        top, left = anyres.pad_offsets((nh, nw), (bh, bw))
        canvas = np.zeros((bh, bw, 3), dtype=np.uint8)  # black padding, like transformers' np.pad
        canvas[top:top + nh, left:left + nw] = np.asarray(_pil_resize(image, nh, nw))
        # (bh, bw, 3) has the memory layout of (rows, S, cols, S, 3): the tiles are a strided view of it,
        # cast to float straight into place (no divide-into-patches copies).
        grid = out[1:].reshape(rows, cols, 3, S, S)  # a view: out is C-contiguous
        grid[...] = canvas.reshape(rows, S, cols, S, 3).transpose(0, 2, 4, 1, 3)
        self._normalize(out[1:])
        if base is not None:
            base.result()
        else:
            self._fill_base(image, out[0])

    def _fill_base(self, image: Image.Image, out: np.ndarray) -> None:
        """Tile 0: the whole image squashed to S x S (transformers resizes to (S, S), no crop)."""
        S = self.tile_size
        out[...] = np.asarray(_pil_resize(image, S, S)).transpose(2, 0, 1)  # (S, S, 3) uint8 -> (3, S, S)
        self._normalize(out)

    def _normalize(self, pixels: np.ndarray) -> None:
        # transformers: float32(x * (1/255) in float64), then (x - mean) / std in float32. x / 255 in float32
        # rounds to the same value for all 256 inputs, so the result is bit-equal.
        np.divide(pixels, np.float32(255), out=pixels)
        np.subtract(pixels, self._mean, out=pixels)
        np.divide(pixels, self._std, out=pixels)

    def _executor(self) -> Optional[ThreadPoolExecutor]:
        if self.num_threads <= 1 or get_worker_info() is not None:
            return None
        if self._pool is None or self._pool_pid != os.getpid():  # threads do not survive a fork
            self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="anyres-resize")
            self._pool_pid = os.getpid()
        return self._pool

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_pool"], state["_pool_pid"] = None, -1  # pools are not picklable (DataLoader workers)
        return state

    def __repr__(self) -> str:
        return (f"AnyResImageProcessor(tile_size={self.tile_size}, grid_pinpoints={self.grid_pinpoints}, "
                f"image_mean={self.image_mean}, image_std={self.image_std})")


def _pil_resize(image: Image.Image, height: int, width: int) -> Image.Image:
    if (image.height, image.width) == (height, width):
        return image  # PIL would return an identical copy
    return image.resize((width, height), _BICUBIC)


def _shortest_edge_size(image_hw: Tuple[int, int], size: int) -> Tuple[int, int]:
    """(h, w) with the shorter side == size and the longer one scaled and truncated (transformers' rule)."""
    h, w = image_hw
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(size * long / short)
    return (new_long, size) if w <= h else (size, new_long)


def _channel_triple(values: Sequence[float], what: str) -> Tuple[float, float, float]:
    try:
        triple = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 3 numbers (R, G, B), got {values!r}") from None
    if len(triple) != 3:
        raise ValueError(f"{what} must be 3 numbers (R, G, B), got {values!r}")
    return triple  # type: ignore[return-value]

"""Frechet distance (FID-style) between generated and real pictures, in our own vision tower's features.

    from eval.gen.fd import tower_features, frechet_distance, fd_scores, evaluate_generation
    feats = tower_features(model, images)              # (N, D) float64, mean-pooled patch features
    fd_scores(model, generated, real)                  # {"fd": ..., "fd_real_vs_real": ...}
    metrics = evaluate_generation(model, "data/shapes/gen_test.json", generated)   # + the checker's scores

There is no Inception network offline, so the features come from the project's trained vision tower
(``model.vision_tower`` of a ``mllm.model.MultimodalLM``): pictures are resized to its tile size,
normalised with ``model.config.image`` mean/std exactly as the image processor does, and the tower's
patch features (already at the configured feature layer) are averaged over patches. The numbers are only
comparable between runs that use the same tower. ``fd_real_vs_real`` (two disjoint halves of the real
set, even vs odd records) is the noise floor to read ``fd`` against; with N/2 samples per side it is
biased upward compared with ``fd`` on N, as FD always is for smaller samples.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from data_pipelines.shapes.gen import read_gen_json
from eval.gen.checker import load_images, score_images

__all__ = ["tower_features", "frechet_distance", "fd_scores", "evaluate_generation", "as_float_nchw",
           "real_halves", "GENERATION_METRIC_KEYS"]

GENERATION_METRIC_KEYS = ("everything_accuracy", "colour_shape_accuracy", "colour_accuracy", "shape_accuracy",
                          "position_accuracy", "colour_shape_position_accuracy", "count_accuracy", "fd",
                          "fd_real_vs_real", "n_images")


def as_float_nchw(images: Any) -> torch.Tensor:
    """(N,3,H,W) or (N,H,W,3) tensor/array, or a list of HxWx3 / 3xHxW arrays or PIL images; uint8 is
    scaled from 0-255, floats are taken as [0,1] -> float32 (N,3,H,W) in [0,1]."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("fd: no images")
        arrays = [im if torch.is_tensor(im) else torch.from_numpy(np.array(im.convert("RGB") if hasattr(im, "convert")
                                                                           else im)) for im in images]
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) != 1:
            raise ValueError(f"fd: images differ in shape ({sorted(shapes)}); resize them to one size first")
        images = torch.stack(arrays)
    x = torch.as_tensor(images)
    if x.dim() != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"fd: expected images as (N,3,H,W) or (N,H,W,3), got shape {tuple(x.shape)}")
    if x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)  # (N, H, W, 3) -> (N, 3, H, W)
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.is_floating_point():
        raise ValueError(f"fd: expected uint8 or float pixels, got {x.dtype}")
    return x.float().clamp(0.0, 1.0)


@torch.no_grad()
def tower_features(model, images: Any, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled vision-tower features of ``images`` (see ``as_float_nchw``) -> (N, D) float64."""
    tower = model.vision_tower
    s = tower.image_size
    mean = torch.tensor(model.config.image.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(model.config.image.std, dtype=torch.float32).view(1, 3, 1, 1)
    x = as_float_nchw(images)
    was_training = tower.training
    tower.eval()
    try:
        out = []
        for i in range(0, x.shape[0], batch_size):
            b = x[i:i + batch_size]  # (B, 3, H, W) in [0,1]
            if b.shape[-2:] != (s, s):
                # bicubic with antialias, like the image processor's PIL bicubic resize
                b = F.interpolate(b, size=(s, s), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
            b = ((b - mean) / std).to(device=model.device, dtype=tower.dtype)
            feats = tower(b)  # (B, tokens, C)
            out.append(feats.float().mean(dim=1).cpu())  # (B, C)
    finally:
        tower.train(was_training)
    return torch.cat(out).double().numpy()


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T  # rounding can leave tiny negative eigenvalues


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (N, D) and b (M, D):
    |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2). The matrix square roots are taken
    of symmetric PSD matrices with ``eigh`` (no scipy, no complex parts), which is exact and symmetric
    in a and b up to rounding."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"frechet_distance: expected (N, D) and (M, D) features, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance: need at least 2 samples per set, got {len(a)} and {len(b)}")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrt_psd(sa)
    cross = root_a @ sb @ root_a
    tr_cross = float(np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)).sum())
    return max(0.0, float(mu @ mu) + float(np.trace(sa) + np.trace(sb)) - 2.0 * tr_cross)


def real_halves(n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Index arrays of the two disjoint halves used for ``fd_real_vs_real``: even and odd positions."""
    idx = np.arange(n)
    return idx[0::2], idx[1::2]


def fd_scores(model, gen_images: Any, real_images: Any, batch_size: int = 64) -> Dict[str, float]:
    """{"fd": FD(generated, real), "fd_real_vs_real": FD(real even, real odd)} in tower features."""
    gen = tower_features(model, gen_images, batch_size)
    real = tower_features(model, real_images, batch_size)
    if len(real) < 4:
        raise ValueError(f"fd_scores: need at least 4 real images (two halves of 2), got {len(real)}")
    even, odd = real_halves(len(real))
    return {"fd": frechet_distance(gen, real), "fd_real_vs_real": frechet_distance(real[even], real[odd])}


def evaluate_generation(model, gen_test_json: str, images: Any, batch_size: int = 64) -> Dict[str, Any]:
    """Checker scores and FD for ``images`` generated from the prompts of ``gen_test_json``.

    ``images[i]`` answers record i; fewer images than records scores the first ``len(images)`` records
    (``n_images`` says how many), while FD always compares against all the real test pictures."""
    records = read_gen_json(gen_test_json)
    gen = as_float_nchw(images)  # (N, 3, H, W) in [0,1]
    if gen.shape[0] > len(records):
        raise ValueError(f"evaluate_generation: {gen.shape[0]} images but {gen_test_json} has only "
                         f"{len(records)} records")
    scores = score_images(list(gen.permute(0, 2, 3, 1).numpy()), [r["shapes"] for r in records[:gen.shape[0]]])
    real = load_images(gen_test_json, records)
    out = {**{k: scores[k] for k in GENERATION_METRIC_KEYS if k in scores},
           **fd_scores(model, gen, real, batch_size)}
    return {k: out[k] for k in GENERATION_METRIC_KEYS}

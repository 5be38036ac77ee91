"""Rectified flow: timestep sampling, the training loss and an Euler sampler with classifier-free guidance.

    loss = rectified_flow_loss(lambda x_t, t: model(x_t, t, ...), x0, mean=0.0, std=1.0, shift=1.0)
    x0 = euler_sample(cond_fn, torch.randn(B, C, H, W), steps=20, cfg_scale=3.0, uncond_fn=uncond_fn)

Convention (SD3 / rectified flow): x_t = (1 - t) x0 + t * noise, t = 0 is data and t = 1 is noise; the
model predicts the velocity v = noise - x0, so dx/dt = v and sampling integrates from t = 1 down to t = 0.

This file imports only torch/math/stdlib: the remote-code export copies it verbatim.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, ...), t (B,)) -> v (B, ...)


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's resolution shift t' = s t / (1 + (s - 1) t): monotonic, fixes 0 and 1, s > 1 moves mass to noise."""
    if shift <= 0:
        raise ValueError(f"flow: shift must be > 0, got {shift}")
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


TIME_SAMPLINGS = ("logit_normal", "uniform")
X0_MIN_T = 0.05  # x0 -> velocity divides by t: below this the division would amplify the x0 error without bound


def sample_timesteps(n: int, *, mean: float = 0.0, std: float = 1.0, shift: float = 1.0, sampling: str = "logit_normal",
                     generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """(n,) training times: logit-normal t = sigmoid(N(mean, std^2)) (SD3) or uniform in [0, 1], then the
    optional SD3 shift."""
    if std <= 0:
        raise ValueError(f"flow: std must be > 0, got {std}")
    if sampling not in TIME_SAMPLINGS:
        raise ValueError(f"flow: unknown timestep sampling {sampling!r}; known: {', '.join(TIME_SAMPLINGS)}")
    gen_device = generator.device if generator is not None else device
    if sampling == "uniform":
        t = torch.rand(n, generator=generator, device=gen_device)
    else:
        t = torch.sigmoid(torch.randn(n, generator=generator, device=gen_device) * std + mean)
    return shift_timesteps(t, shift).to(device)


def velocity_from_x0(x_t: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The velocity a clean-latent prediction implies: x_t = (1 - t) x0 + t noise gives v = (x_t - x0) / t
    (t clamped at ``X0_MIN_T``)."""
    return (x_t - x0) / _per_sample(t, x_t).clamp(min=X0_MIN_T)


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))  # (B, 1, ..., 1)


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, with t (B,) broadcast over the other dims of x0."""
    t = _per_sample(t, x0)
    return (1 - t) * x0 + t * noise


def rectified_flow_loss(model_fn: ModelFn, x0: torch.Tensor, *, t: Optional[torch.Tensor] = None,
                        noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                        prediction: str = "velocity", **timestep_kwargs) -> torch.Tensor:
    """Mean squared error of model_fn(x_t, t) against its target (a scalar): the velocity noise - x0 when
    ``prediction`` is "velocity" (rectified flow), the clean latent x0 itself when it is "x0".

    ``t`` and ``noise`` are drawn (from ``generator`` when given) unless passed; ``timestep_kwargs``
    (mean, std, shift, sampling) go to ``sample_timesteps``."""
    if prediction not in ("velocity", "x0"):
        raise ValueError(f"flow: unknown prediction {prediction!r}; known: velocity, x0")
    b = x0.shape[0]
    if noise is None:
        gen_device = generator.device if generator is not None else x0.device
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    if t is None:
        t = sample_timesteps(b, generator=generator, device=x0.device, **timestep_kwargs)
    elif timestep_kwargs:
        raise ValueError(f"flow: timestep options {sorted(timestep_kwargs)} given together with explicit t")
    x_t = interpolate(x0, noise, t)
    out = model_fn(x_t, t)
    target = noise - x0 if prediction == "velocity" else x0
    return F.mse_loss(out.float(), target.float())


def guidance(v_cond: torch.Tensor, v_uncond: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance: v_u + w (v_c - v_u) (w = 1: conditional, w = 0: unconditional)."""
    return v_uncond + cfg_scale * (v_cond - v_uncond)


def euler_sample(model_fn: ModelFn, noise: torch.Tensor, *, steps: int, cfg_scale: float = 1.0,
                 uncond_fn: Optional[ModelFn] = None, shift: float = 1.0) -> torch.Tensor:
    """Integrate dx/dt = v from t = 1 (``noise``) to t = 0 in ``steps`` Euler steps; returns x0.

    With ``uncond_fn`` and cfg_scale != 1 each step evaluates both and applies ``guidance``; otherwise a
    single pass of ``model_fn``. ``shift`` warps the uniform time grid like ``shift_timesteps`` (SD3 samples
    on the same shifted schedule it trained on)."""
    if steps < 1:
        raise ValueError(f"flow: steps must be >= 1, got {steps}")
    ts = shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)
    x = noise
    b = noise.shape[0]
    guided = uncond_fn is not None and cfg_scale != 1.0
    for i in range(steps):
        t = torch.full((b,), float(ts[i]), device=noise.device)
        dt = float(ts[i + 1] - ts[i])  # negative: towards the data
        v = model_fn(x, t)
        if guided:
            v = guidance(v, uncond_fn(x, t), cfg_scale)
        x = x + dt * v.to(x.dtype)
    return x

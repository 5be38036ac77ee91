"""Rectified flow (timesteps, loss, Euler + CFG) and the autoencoders (identity, diffusers AutoencoderKL)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mllm.gen.autoencoder import VAE_FACTORS, DiffusersAutoencoder, IdentityAutoencoder, build_autoencoder
from mllm.gen.flow import (euler_sample, guidance, interpolate, rectified_flow_loss, sample_timesteps,
                           shift_timesteps)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- timesteps ------------------------------------------------------------------------------------
def test_logit_normal_statistics():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(200_000, mean=0.5, std=0.8, generator=g)
    assert t.shape == (200_000,) and 0 < t.min() and t.max() < 1
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item() - 0.5) < 0.01 and abs(logit.std().item() - 0.8) < 0.01
    t0 = sample_timesteps(200_000, generator=torch.Generator().manual_seed(1))
    assert abs(t0.median().item() - 0.5) < 0.01


def test_shift_is_monotonic_fixes_ends_and_moves_mass_to_noise():
    grid = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.5, 1.0, 3.0):
        shifted = shift_timesteps(grid, s)
        assert bool((shifted[1:] > shifted[:-1]).all())
        assert shifted[0] == 0 and shifted[-1] == 1
    assert torch.equal(shift_timesteps(grid, 1.0), grid)
    assert shift_timesteps(torch.tensor([0.5]), 3.0).item() == pytest.approx(0.75)
    plain = sample_timesteps(10_000, generator=torch.Generator().manual_seed(0))
    shifted = sample_timesteps(10_000, shift=3.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(shifted, shift_timesteps(plain, 3.0))
    assert shifted.median() > plain.median() + 0.2
    with pytest.raises(ValueError, match="shift must be > 0"):
        shift_timesteps(grid, 0.0)


# ---- loss -----------------------------------------------------------------------------------------
def test_interpolate_and_loss_target():
    x0, noise = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    t = torch.tensor([0.0, 1.0, 0.25, 0.5])
    xt = interpolate(x0, noise, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], noise[1])
    torch.testing.assert_close(xt[2], 0.75 * x0[2] + 0.25 * noise[2])
    # the target is noise - x0: a model that returns exactly that has zero loss, its negative does not
    loss = rectified_flow_loss(lambda x, tt: noise - x0, x0, t=t, noise=noise)
    assert loss.item() == 0.0
    wrong = rectified_flow_loss(lambda x, tt: x0 - noise, x0, t=t, noise=noise)
    torch.testing.assert_close(wrong, 4 * (noise - x0).pow(2).mean())
    # drawn t / noise come from the generator
    f = lambda x, tt: x * tt.view(-1, 1, 1, 1)  # noqa: E731
    a = rectified_flow_loss(f, x0, generator=torch.Generator().manual_seed(3), shift=2.0)
    b = rectified_flow_loss(f, x0, generator=torch.Generator().manual_seed(3), shift=2.0)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="together with explicit t"):
        rectified_flow_loss(f, x0, t=t, shift=2.0)


def test_euler_with_exact_velocity_returns_the_point_mass():
    a = torch.tensor([[1.5, -2.0, 0.25]])
    for steps in (1, 4, 20):
        for shift in (1.0, 3.0):
            noise = torch.randn(5, 3, dtype=torch.float64)
            # for a point mass at a, x_t = (1 - t) a + t eps, so v = eps - a = (x_t - a) / t exactly
            out = euler_sample(lambda x, t: (x - a) / t[:, None], noise, steps=steps, shift=shift)
            torch.testing.assert_close(out, a.to(out.dtype).expand_as(out), atol=1e-6, rtol=0)


def test_cfg_scales():
    noise = torch.randn(6, 4)
    wc, wu = torch.randn(4, 4) * 0.3, torch.randn(4, 4) * 0.3

    def cond_fn(x, t):
        return x @ wc + t[:, None]

    def uncond_fn(x, t):
        return x @ wu - 2 * t[:, None] ** 2

    def run(fn, w=1.0, unc=None):
        return euler_sample(fn, noise, steps=7, cfg_scale=w, uncond_fn=unc)

    assert torch.equal(run(cond_fn, 1.0, uncond_fn), run(cond_fn))
    torch.testing.assert_close(run(cond_fn, 0.0, uncond_fn), run(uncond_fn))
    torch.testing.assert_close(run(cond_fn, 2.0, uncond_fn),
                               run(lambda x, t: 2 * cond_fn(x, t) - uncond_fn(x, t)))
    vc, vu = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(guidance(vc, vu, 3.0), vu + 3.0 * (vc - vu))


class _ToyVelocity(nn.Module):
    """A small MLP v(x, t, class) for 2-D points."""

    def __init__(self):
        super().__init__()
        self.label = nn.Embedding(3, 16)  # class 2 = "unconditional"
        self.net = nn.Sequential(nn.Linear(2 + 1 + 16, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(),
                                 nn.Linear(128, 2))

    def forward(self, x, t, y):
        return self.net(torch.cat([x, t[:, None], self.label(y)], dim=1))


def test_flow_learns_two_gaussian_modes_and_euler_lands_on_them():
    torch.manual_seed(0)
    modes = torch.tensor([[-2.0, 1.0], [2.0, -1.0]])
    model = _ToyVelocity()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for step in range(600):
        y = torch.randint(0, 2, (256,), generator=g)
        x0 = modes[y] + 0.1 * torch.randn(256, 2, generator=g)
        y_in = torch.where(torch.rand(256, generator=g) < 0.2, torch.full_like(y, 2), y)
        loss = rectified_flow_loss(lambda x, t: model(x, t, y_in), x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-50:]) / 50 < 0.6 * sum(losses[:50]) / 50
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # unconditional: both modes, each about half the samples, all samples near a mode
        y_u = torch.full((2000,), 2)
        out = euler_sample(lambda x, t: model(x, t, y_u), noise, steps=30)
        dist = torch.cdist(out, modes)  # (N, 2)
        nearest = dist.argmin(1)
        assert dist.min(1).values.median() < 0.3
        assert 0.35 < nearest.float().mean() < 0.65
        # conditional with guidance: every sample at its class's mode
        for cls in (0, 1):
            y_c = torch.full((2000,), cls)
            out = euler_sample(lambda x, t: model(x, t, y_c), noise, steps=30, cfg_scale=2.0,
                               uncond_fn=lambda x, t: model(x, t, y_u))
            assert (torch.cdist(out, modes).argmin(1) == cls).float().mean() > 0.97
            assert (out.mean(0) - modes[cls]).norm() < 0.25


# ---- autoencoders ---------------------------------------------------------------------------------
def test_identity_autoencoder_round_trip():
    ae = build_autoencoder({"kind": "identity"})
    assert isinstance(ae, IdentityAutoencoder) and ae.downsample == 1 and ae.latent_channels == 3
    assert not list(ae.parameters())
    images = torch.rand(2, 3, 8, 8)
    z = ae.encode(images)
    assert z.min() >= -1 and z.max() <= 1
    torch.testing.assert_close(z, images * 2 - 1)
    torch.testing.assert_close(ae.decode(z), images)
    with pytest.raises(ValueError, match="unknown autoencoder kind 'vq'.*identity, diffusers"):
        build_autoencoder({"kind": "vq"})


TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
                up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"], block_out_channels=[8, 16],
                layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=16)


def test_vae_factors_are_the_published_ones():
    assert VAE_FACTORS["sd"]["scale"] == 0.18215 and VAE_FACTORS["sd"]["shift"] == 0.0
    assert VAE_FACTORS["sdxl"]["scale"] == 0.13025 and VAE_FACTORS["sdxl"]["shift"] == 0.0
    assert (VAE_FACTORS["sd3"]["scale"], VAE_FACTORS["sd3"]["shift"]) == (1.5305, 0.0609)
    assert (VAE_FACTORS["flux"]["scale"], VAE_FACTORS["flux"]["shift"]) == (0.3611, 0.1159)


def test_diffusers_autoencoder_scale_shift_and_round_trip(tmp_path):
    pytest.importorskip("diffusers")  # an optional extra; CI installs it
    torch.manual_seed(0)
    ae = build_autoencoder({"kind": "diffusers", "config": TINY_VAE, "family": "flux"})
    assert isinstance(ae, DiffusersAutoencoder)
    assert (ae.scale, ae.shift, ae.latent_channels, ae.downsample) == (0.3611, 0.1159, 4, 2)
    assert all(not p.requires_grad for p in ae.parameters())
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    z = ae.encode(images)
    assert z.shape == (2, 4, 8, 8) and not z.requires_grad
    raw = ae.vae.encode(images.detach() * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(z, (raw - 0.1159) * 0.3611)
    out = ae.decode(z)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, (ae.vae.decode(raw).sample + 1) / 2)  # decode inverts the normalisation
    # the same VAE saved to a directory and loaded by path, with explicit factors
    ae.vae.save_pretrained(tmp_path / "vae")
    ae2 = build_autoencoder({"kind": "diffusers", "path": str(tmp_path / "vae"), "scale": 0.5, "shift": 0.25})
    torch.testing.assert_close(ae2.encode(images), (raw - 0.25) * 0.5)
    torch.testing.assert_close(ae2.decode(ae2.encode(images)), out)
    assert ae2.to_dict()["path"] == str(tmp_path / "vae")
    with pytest.raises(ValueError, match="unknown VAE family 'sd4'"):
        build_autoencoder({"kind": "diffusers", "config": TINY_VAE, "family": "sd4"})
    with pytest.raises(ValueError, match="exactly one of 'path'"):
        build_autoencoder({"kind": "diffusers", "family": "sd"})
    with pytest.raises(ValueError, match="cannot load AutoencoderKL"):
        build_autoencoder({"kind": "diffusers", "path": str(tmp_path / "missing")})

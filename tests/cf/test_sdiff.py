"""S-Diff: the spectral transform, the frequency-shaped forward process, and what the shaping buys a trained model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longrec.cf import SDiffConfig, SDiffModel, fit_sdiff, sdiff_scores, spectral_basis


def _planted(users: int = 120, items: int = 60, groups: int = 4, seed: int = 0) -> np.ndarray:
    """Users in `groups` taste groups, each liking its own block of items with p = 0.5 (a low-rank matrix)."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, groups, users)
    block = np.arange(items) * groups // items
    return (rng.random((users, items)) < np.where(taste[:, None] == block[None, :], 0.5, 0.02)).astype(np.float32)


def test_spectral_basis_is_orthonormal_ordered_and_solves_the_laplacian() -> None:
    x = _planted()
    basis = spectral_basis(x, 15)
    u, lam = basis.vectors, basis.frequencies
    assert u.shape == (60, 15)
    assert np.allclose(u.T @ u, np.eye(15), atol=1e-8)
    assert np.all(np.diff(lam) >= -1e-12) and lam.min() >= 0 and lam.max() <= 1  # smoothest first
    # L u_j = λ_j u_j with L = I - R̃ᵀR̃.
    du, di = np.maximum(x.sum(1), 1) ** -0.5, np.maximum(x.sum(0), 1) ** -0.5
    r = du[:, None] * x * di[None, :]
    laplacian = np.eye(60) - r.T @ r
    assert np.allclose(laplacian @ u, u * lam[None, :], atol=1e-6)
    assert lam[0] == pytest.approx(0.0, abs=1e-8)  # a connected graph's constant-like signal
    # Round trip: a signal inside the span comes back exactly; the item domain through k = I is the identity.
    v = np.random.default_rng(0).normal(size=15)
    assert np.allclose(u.T @ (u @ v), v)
    full = spectral_basis(x[:, :50], 50).vectors
    assert np.allclose(full @ (full.T @ x[0, :50]), x[0, :50], atol=1e-6)
    with pytest.raises(ValueError, match="components"):
        spectral_basis(x, 61)


def _model(shaping: float) -> SDiffModel:
    config = SDiffConfig(components=4, shaping=shaping, noise_scale=1.0, noise_max=0.2, steps=10, hidden=8)
    return SDiffModel(config, np.eye(6)[:, :4], np.array([0.0, 0.2, 0.5, 1.0]), 6)


def test_forward_noise_variance_follows_the_frequency_as_documented() -> None:
    model = _model(shaping=1.0)
    v0 = torch.ones(20000, 4)
    t = torch.full((20000,), 10)
    vt = model.add_noise(v0, t, torch.randn(20000, 4, generator=torch.Generator().manual_seed(0)))
    ab = float(model.alpha_bar[9])
    g = (np.array([0.0, 0.2, 0.5, 1.0]) + 0.05) / 1.05  # ((λ + δ) / (λ_max + δ))^γ, γ = 1
    assert vt.mean(0).numpy() == pytest.approx(np.full(4, ab**0.5), abs=0.02)
    assert vt.var(0).numpy() == pytest.approx((1 - ab) * g**2, rel=0.05)
    # The switch off: every component gets the same variance.
    flat = _model(shaping=0.0).add_noise(v0, t, torch.randn(20000, 4, generator=torch.Generator().manual_seed(0)))
    assert flat.var(0).numpy() == pytest.approx(np.full(4, 1 - ab), rel=0.05)


def test_config_reports_every_problem() -> None:
    with pytest.raises(ValueError, match=r"inference_step.*shaping"):
        SDiffConfig(steps=5, inference_step=6, shaping=-1.0)


def _low_frequency_error(shaping: float) -> float:
    """Error of v̂_0 on the 4 smoothest components when denoising from the LAST step with no condition."""
    x = _planted()
    config = SDiffConfig(
        components=16, shaping=shaping, noise_scale=1.0, noise_min=0.05, noise_max=0.5, steps=10, hidden=64,
        uncondition_rate=0.99, epochs=60, batch_size=32, lr=3e-3,
    )  # fmt: skip
    model = fit_sdiff(x, config)
    with torch.no_grad():
        xt = torch.as_tensor(x)
        v0 = model.to_spectral(xt)
        t = torch.full((x.shape[0],), config.steps)
        vt = model.add_noise(v0, t, torch.randn(v0.shape, generator=torch.Generator().manual_seed(1)))
        v_hat = model.denoise(vt, t, torch.zeros_like(v0))
    return float(((v_hat - v0)[:, :4] ** 2).sum(1).mean() / (v0[:, :4] ** 2).sum(1).mean())


def test_shaped_noise_lets_the_denoiser_recover_the_collaborative_signal_isotropic_noise_destroys() -> None:
    # At ᾱ_T ≈ 0.06 isotropic noise drowns every component; shaped noise leaves the smoothest ones nearly clean, and
    # the trained denoiser reads the users' taste group off them. Without the shaping this gap closes.
    shaped, isotropic = _low_frequency_error(2.0), _low_frequency_error(0.0)
    assert shaped < 0.5 * isotropic, (shaped, isotropic)


def test_scores_rank_the_planted_block_first() -> None:
    x = _planted()
    model = fit_sdiff(x, SDiffConfig(components=8, hidden=32, epochs=30, batch_size=32, lr=3e-3))
    scores = sdiff_scores(model, x)
    block = np.arange(60) * 4 // 60
    own = np.argmax(x @ np.eye(4)[block], 1)  # each user's majority block [U]
    top = np.argmax(np.where(x > 0, -np.inf, scores), 1)
    assert (block[top] == own).mean() > 0.9

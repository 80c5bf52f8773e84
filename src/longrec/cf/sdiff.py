"""S-Diff: anisotropic diffusion for collaborative filtering in the graph-spectral domain (Xia et al., WSDM 2025).

Spectral transform. The item graph is the normalised co-occurrence Ã = R̃ᵀR̃, R̃ = D_u^{-1/2} X D_i^{-1/2} (X [U, I] the
train matrix, D_u / D_i user / item degrees); its Laplacian L = I - Ã has eigenvalues λ_j = 1 - σ_j² ∈ [0, 1] (σ_j the
singular values of R̃). U_k [I, k] holds the eigenvectors of the k smallest λ (the smoothest graph signals, the
collaborative part); a user's row x [I] maps to v = U_kᵀ x [k] and back to U_k v. We compute U_k from the
eigendecomposition of the smaller of the two Gram matrices R̃R̃ᵀ [U, U] / R̃ᵀR̃ [I, I] (dense numpy; fine to ~10⁴).

Forward process (anisotropic). Per component j, the Markov chain v_t = √α_t v_{t-1} + √β_t g_j ε has the marginal

    q(v_t | v_0) = N(√ᾱ_t v_0, (1 - ᾱ_t) g_j² I),   g_j = ((λ_j + δ) / (λ_max + δ))^γ  ∈ (0, 1],

so the smoothest components (small λ_j) get the least noise and keep their signal-to-noise ratio longest, the
roughest get the full noise. γ = `shaping`; γ = 0 gives g_j = 1, plain isotropic diffusion (the ablation). Because
every variance scales by g_j², the DDPM posterior mean of q(v_{t-1} | v_t, v_0) keeps its usual coefficients
(c₀ = √ᾱ_{t-1} β_t / (1 - ᾱ_t), c_t = √α_t (1 - ᾱ_{t-1}) / (1 - ᾱ_t)). β_t = scale · linspace(β_min, β_max, T):
a small bounded schedule, as DiffRec and S-Diff use, since a user vector must not be destroyed completely.
`domain = "items"` runs the same process on x itself (U = I, every g = 1): DiffRec's item-domain diffusion.

Denoiser. An MLP f(v_t, t, c) -> v̂_0 with the step as a sinusoidal embedding applied by FiLM (scale and shift of the
hidden layer, as S-Diff's FiLM denoiser) and the condition c = U_kᵀ(m ⊙ x) / (1 - p): the user's own spectral vector
from a random item dropout m (rate p = `condition_dropout`), so f cannot copy v_0 from c, and c replaced by zeros
with probability `uncondition_rate` (classifier-free training; inference uses the full condition and guidance weight
w: v̂ = (1 + w) f(·, c) - w f(·, ∅)). Loss: ||v̂_0 - v_0||² averaged over components, with t uniform in 1..T.

Inference (deterministic, as DiffRec): v_s = √ᾱ_s v_0 of the observed x at step s = `inference_step` (no noise), then
s steps of v_{t-1} = c₀ v̂_0 + c_t v_t; the scores are U_k v̂_0 [I] (the last step's prediction), ranked over the items
not seen. Where the paper is silent (how c is corrupted, the exact frequency-to-noise map) the choices are ours and
stated here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

__all__ = ["SDiffConfig", "SDiffModel", "SpectralBasis", "fit_sdiff", "sdiff_scores", "spectral_basis"]


@dataclass(frozen=True)
class SpectralBasis:
    """U_k [I, k] (orthonormal columns) and the Laplacian eigenvalues λ [k], ascending (smoothest first)."""

    vectors: NDArray[np.float64]
    frequencies: NDArray[np.float64]


def spectral_basis(train: NDArray[np.float32], components: int) -> SpectralBasis:
    """The k smoothest eigenvectors of the item Laplacian L = I - R̃ᵀR̃ (module doc), k = `components`.

    Only eigenvectors with σ_j > 0 exist beyond the null space; k must not exceed min(U, I).
    """
    x = np.asarray(train, dtype=np.float64)
    n_users, n_items = x.shape
    if not 1 <= components <= min(n_users, n_items):
        raise ValueError(f"components must be in [1, min(U, I)] = [1, {min(n_users, n_items)}]. Got {components}.")
    du = np.maximum(x.sum(1), 1.0) ** -0.5  # [U]
    di = np.maximum(x.sum(0), 1.0) ** -0.5  # [I]
    r = du[:, None] * x * di[None, :]  # [U, I]
    if n_users < n_items:
        mu, w = np.linalg.eigh(r @ r.T)  # ascending, [U]
        mu, w = mu[::-1][:components], w[:, ::-1][:, :components]
        sigma = np.sqrt(np.maximum(mu, 1e-12))
        vectors = (r.T @ w) / sigma[None, :]  # [I, k] right singular vectors
        vectors /= np.linalg.norm(vectors, axis=0, keepdims=True)
    else:
        mu, vectors = np.linalg.eigh(r.T @ r)
        mu, vectors = mu[::-1][:components], vectors[:, ::-1][:, :components]
    return SpectralBasis(vectors=np.ascontiguousarray(vectors), frequencies=np.clip(1.0 - mu, 0.0, 1.0))


@dataclass(frozen=True)
class SDiffConfig:
    """S-Diff's settings (module doc for the formulas).

    Attributes:
        domain: "spectral" (S-Diff) or "items" (DiffRec-style diffusion on x itself; `components`, `shaping` unused).
        components: k, the number of smooth eigenvectors kept.
        shaping: γ, the exponent of the per-frequency noise scale g_j; 0 = isotropic noise (the ablation).
        shaping_floor: δ > 0 in g_j, so the smoothest component still gets some noise.
        steps: T, diffusion steps.
        noise_scale, noise_min, noise_max: β_t = noise_scale · linspace(noise_min, noise_max, T).
        inference_step: s, the step the observed vector is taken to before denoising (0 <= s <= T).
        hidden: width of the denoiser MLP; time_dim: the step embedding's width.
        condition_dropout: p, the item dropout of the condition; uncondition_rate: the share of unconditioned
            training rows; guidance: w at inference.
        lr, weight_decay, epochs, batch_size, seed: Adam and the loop.
    """

    domain: Literal["spectral", "items"] = "spectral"
    components: int = 100
    shaping: float = 1.0
    shaping_floor: float = 0.05
    steps: int = 20
    noise_scale: float = 1.0
    noise_min: float = 0.001
    noise_max: float = 0.1
    inference_step: int = 0
    hidden: int = 512
    time_dim: int = 16
    condition_dropout: float = 0.5
    uncondition_rate: float = 0.1
    guidance: float = 0.0
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.domain not in ("spectral", "items"):
            problems.append(f"domain must be 'spectral' or 'items', got {self.domain!r}")
        if self.components < 1 or self.steps < 1 or self.hidden < 1 or self.epochs < 1 or self.batch_size < 1:
            problems.append("components, steps, hidden, epochs and batch_size must be >= 1")
        if not 0 <= self.inference_step <= self.steps:
            problems.append(f"inference_step must be in [0, steps={self.steps}], got {self.inference_step}")
        if not 0 < self.noise_scale * self.noise_max < 1 or not 0 < self.noise_min <= self.noise_max:
            problems.append("need 0 < noise_min <= noise_max and 0 < noise_scale·noise_max < 1")
        if self.shaping < 0 or self.shaping_floor <= 0:
            problems.append(f"shaping must be >= 0 and shaping_floor > 0, got {self.shaping}, {self.shaping_floor}")
        if not 0 <= self.condition_dropout < 1 or not 0 <= self.uncondition_rate < 1:
            problems.append("condition_dropout and uncondition_rate must be in [0, 1)")
        if problems:
            raise ValueError("SDiffConfig: " + "; ".join(problems) + ".")


def _step_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps t [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], -1)


class SDiffModel(nn.Module):
    """The basis, the (possibly anisotropic) schedule and the FiLM-conditioned denoiser of one fitted S-Diff."""

    basis: torch.Tensor  # [I, k], or empty in the item domain
    noise_std: torch.Tensor  # [k] g_j
    betas: torch.Tensor  # [T]
    alpha_bar: torch.Tensor  # [T], index t - 1

    def __init__(
        self,
        config: SDiffConfig,
        basis: NDArray[np.float64] | None,
        frequencies: NDArray[np.float64] | None,
        num_items: int,
    ) -> None:
        super().__init__()
        self.config = config
        if basis is None:  # the item domain: identity transform, isotropic noise
            dim = num_items
            self.register_buffer("basis", torch.empty(0))
            g = torch.ones(dim)
        else:
            dim = basis.shape[1]
            self.register_buffer("basis", torch.as_tensor(basis, dtype=torch.float32))  # [I, k]
            lam = torch.as_tensor(frequencies, dtype=torch.float32)  # [k]
            floor = config.shaping_floor
            g = ((lam + floor) / (lam.max() + floor)) ** config.shaping
        self.register_buffer("noise_std", g)  # [k] g_j
        betas = config.noise_scale * torch.linspace(
            config.noise_min, config.noise_max, config.steps, dtype=torch.float64
        )
        alpha_bar = torch.cumprod(1.0 - betas, 0)
        self.register_buffer("betas", betas.float())  # [T]
        self.register_buffer("alpha_bar", alpha_bar.float())  # [T], index t-1
        self.dim = dim
        self.inp = nn.Linear(2 * dim, config.hidden)
        self.film = nn.Linear(config.time_dim, 2 * config.hidden)
        self.mid = nn.Linear(config.hidden, config.hidden)
        self.out = nn.Linear(config.hidden, dim)

    def to_spectral(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, I] -> v [B, k] (identity in the item domain)."""
        return x @ self.basis if self.basis.numel() else x

    def to_items(self, v: torch.Tensor) -> torch.Tensor:
        """v [B, k] -> U_k v [B, I]."""
        return v @ self.basis.T if self.basis.numel() else v

    def add_noise(self, v0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Sample q(v_t | v_0): √ᾱ_t v_0 + √(1-ᾱ_t) g ⊙ ε, with t [B] in 1..T and ε [B, k]."""
        ab = self.alpha_bar[t - 1][:, None]
        return ab.sqrt() * v0 + (1.0 - ab).sqrt() * self.noise_std[None, :] * noise

    def denoise(self, vt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """f(v_t, t, c) -> v̂_0 [B, k]; t [B] in 0..T."""
        scale, shift = self.film(_step_embedding(t, self.config.time_dim)).chunk(2, -1)
        h = torch.tanh(self.inp(torch.cat([vt, cond], -1)))
        h = torch.tanh(self.mid(h * (1.0 + scale) + shift))
        return self.out(h)

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The denoising loss of a batch of train rows x [B, I] (module doc)."""
        c = self.config
        v0 = self.to_spectral(x)
        t = torch.randint(1, c.steps + 1, (x.shape[0],), generator=generator)
        vt = self.add_noise(v0, t, torch.randn(v0.shape, generator=generator))
        keep = (torch.rand(x.shape, generator=generator) >= c.condition_dropout).float()
        cond = self.to_spectral(x * keep) / (1.0 - c.condition_dropout)
        drop = torch.rand(x.shape[0], generator=generator) < c.uncondition_rate
        cond = torch.where(drop[:, None], torch.zeros_like(cond), cond)
        return ((self.denoise(vt, t, cond) - v0) ** 2).mean()

    @torch.no_grad()
    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Item scores [B, I] of observed rows x [B, I] (deterministic reverse process from step s)."""
        c = self.config
        v0 = self.to_spectral(x)
        s = c.inference_step
        vt = self.alpha_bar[s - 1].sqrt() * v0 if s > 0 else v0
        v_hat = v0
        for step in range(max(s, 1), 0, -1):
            t = torch.full((x.shape[0],), step if s > 0 else 0, dtype=torch.long)
            v_hat = self.denoise(vt, t, v0)
            if c.guidance:
                v_hat = (1.0 + c.guidance) * v_hat - c.guidance * self.denoise(vt, t, torch.zeros_like(v0))
            if step > 1:
                ab, ab_prev, beta = self.alpha_bar[step - 1], self.alpha_bar[step - 2], self.betas[step - 1]
                vt = ab_prev.sqrt() * beta / (1 - ab) * v_hat + (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab) * vt
        return self.to_items(v_hat)


def fit_sdiff(train: NDArray[np.float32], config: SDiffConfig) -> SDiffModel:
    """Fit S-Diff (or its item-domain / isotropic ablation) on the train matrix [U, I] with Adam; returns the model."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    if config.domain == "spectral":
        basis = spectral_basis(train, config.components)
        model = SDiffModel(config, basis.vectors, basis.frequencies, train.shape[1])
    else:
        model = SDiffModel(config, None, None, train.shape[1])
    x = torch.as_tensor(train, dtype=torch.float32)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(x.shape[0], generator=generator)
        for start in range(0, x.shape[0], config.batch_size):
            loss = model.loss(x[order[start : start + config.batch_size]], generator)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    return model


def sdiff_scores(model: SDiffModel, train: NDArray[np.float32], batch_size: int = 1024) -> NDArray[np.float32]:
    """Scores [U, I] of every user's train row."""
    x = torch.as_tensor(train, dtype=torch.float32)
    return torch.cat([model.scores(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]).numpy()

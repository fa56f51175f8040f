r"""SDE objects: the forward SDE of a schedule and its reverse-time family.

Forward (Song et al. 2021, eq. 5 [SDE]):  dx = f(t) x dt + g(t) dw.
Reverse family with stochasticity η ∈ [0, 1] (Karras et al. 2022, eq. 6 [EDM], written in t):

    dx = [f x − (1 + η²)/2 · g² ∇log p_t(x)] dt + η g dw̄,

η = 1 is the reverse-time SDE (Song et al. 2021, eq. 6 [SDE]), η = 0 the probability-flow ODE (eq. 13 there).
Drift and diffusion
are plain callables of (x, t) — t a float or a per-sample tensor — so any solver can integrate them.
"""

from __future__ import annotations

from typing import Callable

import torch

from unisde.core.schedule import NoiseSchedule, _expand_like

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _coef(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _expand_like(values, x).to(x.dtype)


def _time(t) -> torch.Tensor:
    """t as float64: 0-d for a shared time, (B,) for per-sample times. Schedule coefficients are evaluated on
    this (not on a B-fold copy of a shared time, which made every step O(B) schedule evaluations)."""
    return torch.as_tensor(t, dtype=torch.float64)


def _batch_time(t, x: torch.Tensor) -> torch.Tensor:
    """Per-sample times (B,), the form score functions receive."""
    t = _time(t)
    return t.expand(x.shape[0]) if t.ndim == 0 else t


class ForwardSDE:
    """dx = f(t) x dt + g(t) dw for a :class:`NoiseSchedule`
    (Song et al. 2021, eq. 5 [SDE]; coefficients: Lu et al. 2022, §2.1 [DPMSolver])."""

    def __init__(self, schedule: NoiseSchedule):
        self.schedule = schedule

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        """f(t) · x."""
        return _coef(self.schedule.f(_time(t)), x) * x

    def diffusion(self, x: torch.Tensor, t) -> torch.Tensor:
        """g(t), broadcastable against x."""
        return _coef(self.schedule.g(_time(t)), x)

    def reverse(self, score_fn: ScoreFn, eta: float = 1.0) -> "ReverseSDE":
        """The reverse-time family with stochasticity η (η = 1: eq. 26; η = 0: PF-ODE, eq. 27)."""
        return ReverseSDE(self, score_fn, eta)

    def probability_flow(self, score_fn: ScoreFn) -> "ReverseSDE":
        """The probability-flow ODE dx = [f x − ½ g² ∇log p_t] dt (Song et al. 2021, eq. 13 [SDE])."""
        return ReverseSDE(self, score_fn, 0.0)


class ReverseSDE:
    """dx = [f x − (1 + η²)/2 g² score(x, t)] dt + η g dw̄, integrated from t = 1 towards t = 0.

    ``drift(x, t)`` and ``diffusion(x, t)`` are the coefficients with respect to forward time dt: a solver
    stepping from t to t − h uses x − drift·h + diffusion·√h·z.
    """

    def __init__(self, forward: ForwardSDE, score_fn: ScoreFn, eta: float = 1.0):
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must lie in [0, 1] (1: reverse SDE, 0: probability-flow ODE), got {eta}")
        self.forward, self.score_fn, self.eta = forward, score_fn, float(eta)
        self.schedule = forward.schedule

    @property
    def is_ode(self) -> bool:
        return self.eta == 0.0

    def drift(self, x: torch.Tensor, t) -> torch.Tensor:
        g2 = _coef(self.schedule.g2(_time(t)), x)
        return self.forward.drift(x, t) - 0.5 * (1 + self.eta**2) * g2 * self.score_fn(x, _batch_time(t, x))

    def diffusion(self, x: torch.Tensor, t) -> torch.Tensor:
        return self.eta * self.forward.diffusion(x, t)

    def euler_maruyama_step(
        self, x: torch.Tensor, t: float, t_next: float, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """One Euler–Maruyama step backwards in time from t to t_next < t (noise drawn if not given)."""
        h = float(t) - float(t_next)
        out = x - self.drift(x, t) * h
        if self.eta > 0:
            noise = torch.randn_like(x) if noise is None else noise
            out = out + self.diffusion(x, t) * (h**0.5) * noise
        return out


def euler_maruyama_forward(
    schedule: NoiseSchedule, x0: torch.Tensor, t_grid: torch.Tensor, generator=None
) -> torch.Tensor:
    """Simulate the forward SDE from x0 along an increasing time grid by Euler–Maruyama; returns x at t_grid[-1]."""
    sde = ForwardSDE(schedule)
    x = x0.clone()
    for t, t_next in zip(t_grid[:-1].tolist(), t_grid[1:].tolist()):
        h = t_next - t
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + sde.drift(x, t) * h + sde.diffusion(x, t) * (h**0.5) * z
    return x

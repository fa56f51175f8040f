r"""An adaptive embedded Runge–Kutta solver (Dormand–Prince 5(4)) for batched torch states.

Used by :mod:`unisde.likelihood` to integrate the probability-flow ODE (Song et al. 2021, eq. 13 [SDE]) jointly with its
divergence, and by :mod:`unisde.plots` for PF-ODE paths. It is written once here rather than borrowed from
``scipy.integrate.solve_ivp`` because the right-hand side lives in torch (autograd for the divergence, any
device) and a round trip through NumPy on every evaluation would pin it to the CPU.

Method: the 7-stage FSAL pair of Dormand & Prince (1980), propagating the 5th-order solution (local
extrapolation), with the 4th-order embedded solution giving the error estimate. Step-size control is the
classical one of Hairer, Nørsett & Wanner (Solving ODEs I, §II.4):

    err = max over the batch of RMS_i( (y5 − y4)_i / (atol + rtol · max(|y_i|, |y_new,i|)) ),
    accept when err ≤ 1,   h_new = h · clip(0.9 · err^(−1/5), 0.2, 10)   (no growth right after a rejection),

so every sample of a batch meets the tolerance (one shared step size — the samples' ODEs are solved together
because the model is evaluated on the whole batch at once). The first step is chosen by Hairer's heuristic
(one extra function evaluation). A solver that cannot reach its tolerance — too many steps, a step size that
underflows, non-finite values — raises :class:`ODESolverError` naming the time where it stopped; it never
returns a number it does not vouch for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

# Dormand–Prince 5(4) tableau: nodes c, stage matrix A, 5th-order weights B (= last row of A, FSAL) and the
# error weights E = B − B̂ (B̂ the embedded 4th-order weights).
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = _A[6] + (0.0,)
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)

SOLVER_NAME = "dopri5"


class ODESolverError(RuntimeError):
    """The adaptive solver stopped before reaching the end time.

    Attributes: ``t`` (time reached, float), ``t_end`` (the target), ``steps`` (accepted steps taken),
    ``nfe`` (function evaluations spent), ``reason`` (one line).
    """

    def __init__(self, reason: str, t: float, t_end: float, steps: int, nfe: int):
        self.reason, self.t, self.t_end, self.steps, self.nfe = reason, float(t), float(t_end), steps, nfe
        super().__init__(
            f"ODE solver ({SOLVER_NAME}) stopped at t = {self.t:.6g} before reaching t = {self.t_end:.6g} "
            f"after {steps} accepted steps and {nfe} function evaluations: {reason}"
        )


@dataclass
class ODESolution:
    """Result of :func:`solve_ivp`.

    ``t``: float64 times at which ``y`` is reported (``t_eval``, or just the end time); ``y``: the states there,
    stacked along a new first dimension; ``nfe``: right-hand-side evaluations; ``steps`` / ``rejected``:
    accepted / rejected steps; ``solver``, ``rtol``, ``atol``: what was used.
    """

    t: torch.Tensor
    y: torch.Tensor
    nfe: int
    steps: int
    rejected: int
    solver: str
    rtol: float
    atol: float


def _error_norm(err: torch.Tensor, y: torch.Tensor, y_new: torch.Tensor, rtol: float, atol: float) -> float:
    scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
    ratio = (err / scale).reshape(err.shape[0], -1) if err.ndim > 1 else (err / scale).reshape(1, -1)
    return float(ratio.pow(2).mean(dim=1).sqrt().max())


def _check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (isinstance(value, (int, float)) and value > 0 and value < 1):
            raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")


def solve_ivp(
    fun: Callable[[float, torch.Tensor], torch.Tensor],
    t0: float,
    t1: float,
    y0: torch.Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_eval: Sequence[float] | torch.Tensor | None = None,
    max_steps: int = 10_000,
    first_step: float | None = None,
) -> ODESolution:
    """Integrate dy/dt = fun(t, y) from t0 to t1 (either direction) with Dormand–Prince 5(4).

    ``y0`` is a tensor whose first dimension is the batch (each sample's error is controlled separately; the
    step size is shared); ``fun(t, y)`` gets a Python float t and returns a tensor shaped like y. Tolerances
    are relative/absolute per element. ``t_eval``: times (monotone in the direction of integration, inside
    [t0, t1]) at which to report y — steps are shortened to land on them exactly. ``max_steps`` bounds
    accepted + rejected steps. Raises :class:`ODESolverError` (naming the time reached) on failure, and
    ``ValueError`` on bad arguments before any evaluation.
    """
    _check_tolerances(rtol, atol)
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    if not (isinstance(max_steps, int) and max_steps >= 1):
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
    direction = 1.0 if t1 > t0 else -1.0
    if t_eval is None:
        t_eval = torch.tensor([t1], dtype=torch.float64)
    else:
        t_eval = torch.as_tensor(t_eval, dtype=torch.float64).flatten()
        lo, hi = min(t0, t1), max(t0, t1)
        if t_eval.numel() == 0 or (t_eval < lo).any() or (t_eval > hi).any():
            raise ValueError(f"t_eval must be a non-empty set of times inside [{lo}, {hi}]")
        if t_eval.numel() > 1 and ((t_eval[1:] - t_eval[:-1]) * direction <= 0).any():
            raise ValueError("t_eval must be strictly monotone in the direction of integration")

    nfe = 0

    def f(t, y):
        nonlocal nfe
        nfe += 1
        return fun(t, y)

    t, y = t0, y0
    k1 = f(t, y)
    if not torch.isfinite(k1).all():
        raise ODESolverError("the right-hand side is not finite at the initial state", t, t1, 0, nfe)

    if first_step is None:
        # Hairer's starting step: h0 from ‖y‖/‖f‖, refined by a second-derivative estimate (one extra eval).
        scale = atol + rtol * y.abs()
        d0 = float((y / scale).pow(2).mean().sqrt())
        d1 = float((k1 / scale).pow(2).mean().sqrt())
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, abs(t1 - t0))
        k_probe = f(t + direction * h0, y + direction * h0 * k1)
        d2 = float(((k_probe - k1) / scale).pow(2).mean().sqrt()) / h0
        h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** 0.2
        h = min(100 * h0, h1, abs(t1 - t0))
    else:
        h = abs(float(first_step))

    out_t, out_y = [], []
    next_eval = 0
    while next_eval < t_eval.numel() and float(t_eval[next_eval]) == t0:
        out_t.append(t0), out_y.append(y0)
        next_eval += 1

    steps = rejected = 0
    just_rejected = False
    while next_eval < t_eval.numel():
        if steps + rejected >= max_steps:
            raise ODESolverError(
                f"max_steps = {max_steps} exhausted (tolerance rtol={rtol:g}, atol={atol:g} not reachable in that "
                "budget)",
                t,
                t1,
                steps,
                nfe,
            )
        target = float(t_eval[next_eval])
        remaining = (target - t) * direction
        landing = h >= remaining
        step = remaining if landing else h
        if step <= 16 * torch.finfo(torch.float64).eps * max(1.0, abs(t)):
            raise ODESolverError(
                f"step size underflow (h = {step:.3g}); the solution is too stiff or not finite", t, t1, steps, nfe
            )
        hs = direction * step
        ks = [k1]
        for i in range(1, 7):
            incr = sum(a * k for a, k in zip(_A[i], ks) if a != 0.0)
            ks.append(f(t + _C[i] * hs, y + hs * incr))
        y_new = y + hs * sum(b * k for b, k in zip(_B, ks) if b != 0.0)
        err = hs * sum(e * k for e, k in zip(_E, ks) if e != 0.0)
        err_norm = _error_norm(err, y, y_new, rtol, atol)
        finite = err_norm == err_norm and err_norm != float("inf") and bool(torch.isfinite(y_new).all())
        if finite and err_norm <= 1.0:
            steps += 1
            t = target if landing else t + hs
            y, k1 = y_new, ks[6]  # FSAL: the last stage is f(t_new, y_new)
            if landing:
                out_t.append(t), out_y.append(y)
                next_eval += 1
            factor = 10.0 if err_norm == 0 else min(10.0, max(0.2, 0.9 * err_norm**-0.2))
            if just_rejected:
                factor = min(factor, 1.0)
            # A step shortened to land on t_eval says nothing about how large the next may be.
            h = max(h, step * factor) if landing else step * factor
            just_rejected = False
        else:
            rejected += 1
            factor = 0.2 if not finite else max(0.2, 0.9 * err_norm**-0.2)
            h = step * factor
            just_rejected = True

    return ODESolution(
        t=torch.tensor(out_t, dtype=torch.float64),
        y=torch.stack(out_y),
        nfe=nfe,
        steps=steps,
        rejected=rejected,
        solver=SOLVER_NAME,
        rtol=rtol,
        atol=atol,
    )

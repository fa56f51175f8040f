r"""``dpm_adaptive``: DPM-Solver with adaptive step size (Lu et al. 2022a [DPMSolver]: DPM-Solver-12 and -23, an
embedded pair of singlestep solvers with error control) as k-diffusion's ``sample_dpm_adaptive`` runs it, in the view of
:func:`unisde.core.kernels.view_coefficients`, so it runs on every schedule.

Not a fixed-grid sampler: where it evaluates the model depends on the model's outputs, so it cannot be listed in
``timesteps`` before sampling. It is registered like every sampler but marked ``adaptive``: :func:`unisde.get_sampler`
(and so :class:`unisde.UnifiedScheduler`) refuses it with a ValueError saying what to use, ``unisde.list_samplers()``
leaves it out (``unisde.plugins.list_adaptive_samplers()`` lists it), :func:`unisde.sampling.sample_adaptive` drives
it and ``unisde.sample(..., sampler="dpm_adaptive")`` returns its sample.

One attempt from λ_s = −log ℓ_s with step h (in λ): the order-``order`` DPM-Solver step to λ_t = min(λ_end, λ_s + h)
(DPM-Solver-3 with nodes ⅓, ⅔ for ``order=3``, DPM-Solver-2 with node ½ for ``order=2``; the stages of
:func:`unisde.samplers.dpm_fast.singlestep_plan`) and, from the same evaluations, the lower-order one (DPM-Solver-2
with r₁ = ⅓, resp. DPM-Solver-1); in the view's variables y, their difference against

    δ = max(atol, rtol · max(|y_low|, |y_prev|)),   E = ‖(y_low − y_high)/δ‖₂ / √(numel)

(y_prev: the previous accepted y_low, at first the start) is the error the step-size controller reads. The
controller (k-diffusion's ``PIDStepSizeController``; :class:`PIDStepSize`) is Söderlind's digital-filter PID rule
[PIDControl] on ε_k = 1/(E_k + 10⁻⁸):

    factor = limiter(ε_k^{b₁} ε_{k−1}^{b₂} ε_{k−2}^{b₃}),   b₁ = (p + i + d)/k, b₂ = −(p + 2d)/k, b₃ = d/k,
    limiter(u) = 1 + atan(u − 1),

with k = ``order`` (1.5 with ``eta`` > 0) and (p, i, d) = (``pcoeff``, ``icoeff``, ``dcoeff``); the attempt is
accepted when factor ≥ ``accept_safety``, and h ← factor · h either way (the default (0, 1, 0) is the classic
integral controller h ← h · E^{−1/k}, smoothed by the limiter). A rejected attempt re-evaluates at the same point,
as k-diffusion's does (NFE counts every attempt). The loop stops once λ_s ≥ λ_end − 10⁻⁵.

The interval is the grid's, as for ``dpm_fast``: from ℓ(t_0) to its last positive level; the result is the view's y at
ℓ_min taken as the grid's final sample, x = c_end y (the x̃ that k-diffusion returns). ``eta`` > 0 adds k-diffusion's
ancestral noise after each accepted step (:func:`unisde.samplers.dpm_fast.ancestral_target`: the VE rule in σ̃, the
rectified-flow rule in the flow view).
"""

from __future__ import annotations

import math

import torch

from unisde.core.kernels import exponential_integrator_step
from unisde.samplers.base import Option, Sampler, non_negative, positive, view_option
from unisde.samplers.dpm_fast import NODES, ancestral_target, singlestep_plan

F64 = torch.float64


class PIDStepSize:
    """Adaptive step-size control by a PID filter on the inverse error (Söderlind 2003 [PIDControl]) with the
    arctangent limiter of Söderlind & Wang 2006 [PIDControl]: the controller of k-diffusion's
    ``sample_dpm_adaptive`` (``PIDStepSizeController``), written from those formulas. ``h``: the current step
    (in λ); ``propose(error)`` updates it and says whether the attempt that produced ``error`` is accepted."""

    def __init__(self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.history: list[float] = []  # 1/E of the current attempt and of the last two accepted steps

    def propose(self, error: float) -> bool:
        inverse = 1.0 / (error + 1e-8)
        if not self.history:
            self.history = [inverse, inverse, inverse]
        self.history[0] = inverse
        raw = inverse**self.b1 * self.history[1] ** self.b2 * self.history[2] ** self.b3
        factor = 1.0 + math.atan(raw - 1.0)  # a smooth limiter: ≈ raw near 1, in [1 − π/4, 1 + π/2) for raw ≥ 0
        accept = factor >= self.accept_safety
        if accept:
            self.history[2], self.history[1] = self.history[1], inverse
        self.h *= factor
        return accept


def _order(value):
    return None if value in (2, 3) else "must be 2 (DPM-Solver-12) or 3 (DPM-Solver-23)"


def _safety(value):
    # a rejection must shrink the step (factor < accept_safety ≤ 1), else the loop need never end
    return None if 0 < value <= 1 else "must lie in (0, 1]"


class DPMAdaptiveSampler(Sampler):
    """Not registered as a grid sampler (see the module docstring): ``prepare(grid)`` reads the interval and returns
    the first evaluation time only, and :meth:`loop` yields ``(x, t)`` — the sample to evaluate and its time — since
    the times are chosen as it runs. After the loop, :attr:`info` holds k-diffusion's ``return_info``: ``nfe``,
    ``steps`` (attempts), ``n_accept``, ``n_reject``."""

    name = "dpm_adaptive"
    description = "adaptive-step DPM-Solver-12/23 with error control (k-diffusion sample_dpm_adaptive)"
    adaptive = True  # no time grid: unisde.get_sampler refuses it, unisde.sampling.sample_adaptive runs it
    grid_alternatives = "sampler='dpm_fast' (the same solver on a given budget) or 'dpmsolver_singlestep'"
    default_grid = "karras"
    options = {
        "order": Option(3, (int,), "3: DPM-Solver-23 (3 evaluations per attempt), 2: DPM-Solver-12 (2)", _order),
        "rtol": Option(0.05, (float,), "relative tolerance of the error estimate", non_negative),
        "atol": Option(0.0078, (float,), "absolute tolerance (> 0: the error's denominator)", positive),
        "h_init": Option(0.05, (float,), "first step size, in λ = −log σ̃", positive),
        "pcoeff": Option(0.0, (float,), "proportional coefficient of the PID step-size controller"),
        "icoeff": Option(1.0, (float,), "integral coefficient of the PID step-size controller"),
        "dcoeff": Option(0.0, (float,), "derivative coefficient of the PID step-size controller"),
        "accept_safety": Option(0.81, (float,), "accept an attempt when the step factor is ≥ this (≤ 1)", _safety),
        "eta": Option(0.0, (float,), "ancestral η ≥ 0 after each accepted step (k-diffusion's)", non_negative),
        "s_noise": Option(1.0, (float,), "noise inflation S_noise of the ancestral noise", positive),
        "view": view_option(),
    }

    @property
    def stochastic(self):
        return self.opts["eta"] > 0

    def prepare(self, grid):
        """The interval [ℓ_min, ℓ_max] and the scales at its ends, from the grid (its first time, its last positive
        level and its end); returns the first evaluation time."""
        self.grid = self.floats(grid)
        c, lev = self.view_coefficients(grid)
        c, lev = self.floats(c), self.floats(lev)
        last = len(lev) - 2 if lev[-1] == 0.0 else len(lev) - 1
        if last < 1 or not (math.isfinite(lev[0]) and lev[0] > lev[last] > 0.0):
            raise ValueError(
                f"sampler 'dpm_adaptive' integrates from the grid's first noise level down to its last positive one "
                f"and needs two distinct ones (levels {lev}); pass e.g. sigmas=[σ̃_max, σ̃_min] or a grid of two or "
                "more steps"
            )
        self.level_max, self.level_min = lev[0], lev[last]
        self.c_first, self.c_end = c[0], c[-1]
        self.info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        return grid[:1]

    def _nodes(self, levels: list[float]) -> tuple[list[float], list[float]]:
        """Times and view scales of noise levels ℓ > 0 (float64 → floats)."""
        times = self.view_times(torch.tensor(levels, dtype=F64))
        # a dummy clean end point, so that no evaluation time is read as the grid's end (view_coefficients)
        scales = self.view_coefficients(torch.cat([times, times.new_zeros(1)]))[0][:-1]
        return self.floats(times), self.floats(scales)

    def loop(self, x, start=0):
        if start:
            raise ValueError("sampler 'dpm_adaptive' starts at the beginning of its interval only (start=0)")
        o = self.opts
        order, eta, view = o["order"], o["eta"], self.view
        lam, lam_end = -math.log(self.level_max), -math.log(self.level_min)
        pid = PIDStepSize(o["h_init"], o["pcoeff"], o["icoeff"], o["dcoeff"], 1.5 if eta else order, o["accept_safety"])
        info = self.info = {"steps": 0, "nfe": 0, "n_accept": 0, "n_reject": 0}
        time, scale = self.grid[0], self.c_first
        y_prev = y = x / scale
        while lam < lam_end - 1e-5:
            level, level_to = math.exp(-lam), math.exp(-min(lam_end, lam + pid.h))
            down, ratio, noise = ancestral_target(view, level, level_to, eta, self.level_min)
            h = -math.log(down) - lam
            levels = [level] + [math.exp(-(lam + r * h)) for r in NODES[order]]
            # the inner nodes and the next point in one inversion t(ℓ) per attempt (a table's takes ~30 ms)
            node_times, node_scales = self._nodes(levels[1:] + [level_to])
            time_to, scale_to = node_times.pop(), node_scales.pop()
            times, scales = [time, *node_times], [scale, *node_scales]
            high = singlestep_plan(scales + [1.0], levels + [down])  # the last prediction in y at ℓ_down
            low = singlestep_plan(scales[:-1] + [1.0], levels[:-1] + [down])[-1]  # the order − 1 step, same nodes
            values, base, current = [], None, x
            for k, (ratio_k, weights) in enumerate(high):
                current, denoised = yield current, times[k]
                if base is None:
                    base = current
                values.append((current / (scales[k] * levels[k])).sub_(denoised, alpha=1.0 / levels[k]))  # ε̂
                current = self._combine(base, ratio_k, values, weights)
            y_low = self._combine(base, low[0], values, low[1])
            delta = (torch.maximum(y_low.abs(), y_prev.abs()) * o["rtol"]).clamp_(min=o["atol"])
            error = float(torch.linalg.vector_norm((y_low - current) / delta)) / math.sqrt(current.numel())
            info["nfe"] += order
            info["steps"] += 1
            if not math.isfinite(error):
                raise ValueError(
                    f"sampler 'dpm_adaptive': the error estimate of attempt {info['steps']} (at noise level "
                    f"{level:.6g}) is {error}: the samples contain NaN or inf"
                )
            accepted = pid.propose(error)
            if not (math.isfinite(pid.h) and pid.h > 1e-12):
                raise ValueError(
                    f"sampler 'dpm_adaptive': the step size collapsed to {pid.h!r} after attempt {info['steps']} "
                    f"(error {error:.3g}); check the controller options pcoeff/icoeff/dcoeff and the tolerances"
                )
            if accepted:
                info["n_accept"] += 1
                y_prev, y = y_low, current
                if ratio != 1.0:
                    y = y * ratio
                if noise > 0.0:
                    y = y.add(self.noise_like(y), alpha=noise * o["s_noise"])
                lam, time, scale = -math.log(level_to), time_to, scale_to
                x = y * scale
            else:
                info["n_reject"] += 1
                x = base  # the same point again: a fresh attempt with the smaller step
        return y * self.c_end

    @staticmethod
    def _combine(base, ratio, values, weights):
        """ratio · base + Σ_j w_j ε̂_j (zero weights skipped)."""
        out = exponential_integrator_step(base, ratio, values[0], weights[0])
        for value, weight in zip(values[1:], weights[1:]):
            if weight != 0.0:
                out = out.add_(value, alpha=weight)
        return out

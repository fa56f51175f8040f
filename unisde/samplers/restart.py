r"""``restart``: Restart sampling (Xu et al. 2023 [Restart]) as A1111's and ComfyUI's ``sample_restart`` take it —
Heun steps on the probability-flow ODE, interleaved with restart intervals that jump back up with fresh noise and
integrate down again, for any schedule.

The main loop is Karras et al.'s Heun method (Algorithm 1 of [EDM], the ``edm`` sampler without churn; its last
step to σ̃ = 0 is Euler) in the variables of the ``view`` option, as ``edm``'s: the VE view x̃ = x/s, σ̃ = σ/s, or
(``auto`` on zero-terminal-SNR schedules such as the rectified flow) the flow view τ = σ/(s + σ), ComfyUI's
variables on flow models. A restart interval [σ̃_min, σ̃_max] on the grid ([Restart] Algorithm 1: the
forward/backward "Restart" cycle): whenever the main loop reaches the grid point nearest σ̃_min, it is repeated K
times

    x̃ ← x̃ + S_noise √(σ̃_max² − σ̃_min²) z                       (forward: the exact marginal jump up, z ~ N(0, I))
    Heun from σ̃_max down to σ̃_min on N ρ-spaced levels             ([EDM] eq. 5 in σ̃, ρ = 7, ends included)

where σ̃_max is snapped to its nearest grid point too, and then the main loop continues. Re-noising contracts the
error accumulated so far (the paper's point: the added noise shrinks the total-variation gap while the ODE steps
keep the per-step error small), at the cost of (N − 1) K extra Heun steps per interval.

``restart_list`` lists the intervals as ``[[σ̃_min, N, K, σ̃_max], …]`` in VE-view noise levels (k-diffusion's σ; on a
flow model σ̃ = t/(1 − t)). ComfyUI's and A1111's ``{σ_min: [N, K, σ_max]}`` is ``[[σ_min, N, K, σ_max]]``: N counts
the levels of an interval, both ends included (N − 1 Heun steps). An interval whose σ̃_min snaps to the first grid
point, or whose ends snap to the same point (or time), restarts nothing on that grid (as there). The default ``None`` is
A1111/ComfyUI's rule from the paper's Stable Diffusion setup, scaled to the n steps of the grid: below 20 steps no
restart; from 20, one restart of 9 steps on [0.1, 2]; from 36, two restarts of n // 4 steps each.

Where unisde differs: A1111/ComfyUI spend n Heun steps in all, shrinking the main grid to a Karras grid of
n − (N − 1) K steps; unisde keeps the grid it is given (any time grid, n steps) and adds the restart steps on
top. Run A1111's schedule with ``time_grid="karras"``, n − (N − 1) K steps and its ``restart_list`` explicitly.
On flow models ComfyUI reads the restart list in its σ = t and jumps by x + √(t_max² − t_min²) z, which is not the
flow's forward transition; unisde keeps σ̃ and the exact transition, in model space
x ← (s_max/s_min) x + S_noise √(σ_max² − (s_max/s_min)² σ_min²) z (exact also from s(1) = 0).

Samples live in the model's own space; every Heun segment (main or restart) is an ``edm`` sampler prepared on that
segment's decreasing grid, so the Heun step exists once in unisde. Two model calls per Heun step. Steps of the
main grid are the entry points (img2img); a restart belongs to the main step that ends where it begins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from unisde._tensor import scaled
from unisde.core.kernels import posterior_coefficients
from unisde.samplers.base import Option, Sampler, non_negative, view_option
from unisde.samplers.edm import EDMSampler

RHO = 7.0  # the ρ of a restart interval's levels ([EDM] eq. 5, as A1111/ComfyUI)


def _restart_list(value) -> str | None:
    if value is None:
        return None
    for entry in value:
        if not isinstance(entry, (list, tuple)) or len(entry) != 4:
            return f"each entry must be [sigma_min, levels, restarts, sigma_max], got {entry!r}"
        lo, levels, times, hi = entry
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (lo, hi))
        if not numbers or not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
            return f"entry {list(entry)}: need finite 0 < sigma_min < sigma_max"
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 2:
            return f"entry {list(entry)}: levels must be an integer >= 2 (both ends included)"
        if not isinstance(times, int) or isinstance(times, bool) or times < 1:
            return f"entry {list(entry)}: restarts must be an integer >= 1"
    return None


def default_restart_list(n: int) -> list:
    """A1111/ComfyUI's automatic restart list for n steps (the [Restart] Stable Diffusion setup on [0.1, 2])."""
    if n < 20:
        return []
    steps, times = (n // 4, 2) if n >= 36 else (9, 1)
    return [[0.1, steps + 1, times, 2.0]]


@dataclass
class _Segment:
    """One Heun run: an ``edm`` sampler on a decreasing grid, preceded (restart) by the noise jump
    x ← scale · x + std · z from σ̃_min up to σ̃_max in model space."""

    heun: EDMSampler
    times: list = field(default_factory=list)  # its evaluation times
    scale: float = 1.0
    std: float = 0.0
    first_step: int = -1  # main segments: the main step their step 0 is; restarts: -1


class RestartSampler(Sampler):
    name = "restart"
    description = "Restart sampling (A1111/ComfyUI sample_restart): Heun on the PF-ODE plus noisy restart intervals"
    default_grid = "karras"
    order = 2  # model calls per Heun step (diffusers' Heun `order`)
    stochastic = True
    options = {
        "restart_list": Option(
            None,
            (list, tuple, type(None)),
            "restart intervals [[σ̃_min, levels N, restarts K, σ̃_max], …] in VE σ̃; None: A1111/ComfyUI's rule "
            "for the step count; []: plain Heun",
            _restart_list,
        ),
        "s_noise": Option(1.0, (float,), "scale S_noise of the restart noise", non_negative),
        "view": view_option(),  # the Heun steps' variables, as edm's (the restart intervals are in σ̃ whatever it is)
    }

    def prepare(self, grid):
        """Cut the main grid at the restart points, prepare one Heun segment per main piece and per restart
        interval, and list every evaluation time in the order the loop takes them."""
        from unisde.grids import get_grid

        self.grid = self.floats(grid)
        n = grid.numel() - 1
        s, sigma = self.grid_coefficients(grid)
        ve = self.floats(sigma / s)
        s_exact, sigma_exact = self.grid_coefficients(grid, exact=True)  # the jumps: exact also from s(1) = 0
        if any(v <= 0 for v in ve[:-1]):
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid σ̃ = {ve[:-1]}"
            )
        entries = self.opts["restart_list"]
        restarts = {}  # grid index where a restart begins → [(index of σ̃_max, levels, restarts)]
        for lo, levels, times, hi in default_restart_list(n) if entries is None else entries:
            i_lo = min(range(n + 1), key=lambda j: abs(ve[j] - lo))  # nearest grid point, first on ties
            i_hi = min(range(n + 1), key=lambda j: abs(ve[j] - hi))
            if i_lo >= 1 and i_hi < i_lo and self.grid[i_hi] > self.grid[i_lo]:  # (VE grids may end t = 0 twice)
                restarts.setdefault(i_lo, []).append((i_hi, levels, times))
        karras = get_grid("karras")
        self.segments, times_out, self.step_starts = [], [], {}
        cuts = [0, *sorted(i for i in restarts if i < n), n]
        for a, b in zip(cuts, cuts[1:]):
            main = self._segment(grid[a : b + 1])
            main.first_step = a
            for k, step in main.heun.step_starts.items():
                self.step_starts[len(times_out) + k] = a + step
            times_out.extend(main.times)
            self.segments.append(main)
            for i_hi, levels, repeats in restarts.get(b, ()):
                levels_t = karras.times(self.schedule, levels, t_min=self.grid[b], t_max=self.grid[i_hi], rho=RHO)
                # the forward transition from t_b up to t_hi: x ← (s_hi/s_b) x + √(σ_hi² − (s_hi/s_b)² σ_b²) z
                variance = posterior_coefficients(s_exact[i_hi], sigma_exact[i_hi], s_exact[b], sigma_exact[b])[2]
                jump = (float(s_exact[i_hi] / s_exact[b]), self.opts["s_noise"] * math.sqrt(float(variance)))
                segment = self._segment(levels_t)
                segment.scale, segment.std = jump
                for _ in range(repeats):  # the same interval K times (the segment holds no state)
                    times_out.extend(segment.times)
                    self.segments.append(segment)
        return torch.tensor(times_out, dtype=torch.float64)

    def _segment(self, times: torch.Tensor) -> _Segment:
        heun = EDMSampler(self.schedule, view=self.opts["view"])  # Heun without churn: [EDM] Algorithm 1
        return _Segment(heun, [float(t) for t in heun.prepare(times.to(torch.float64))])

    def loop(self, x, start=0):
        step = self.entry_step(start)
        first = max(j for j, seg in enumerate(self.segments) if 0 <= seg.first_step <= step)
        for j in range(first, len(self.segments)):
            seg = self.segments[j]
            sub_start = 0
            if j == first:  # entered mid-segment: the sub-loop's evaluation of that main step
                sub_start = next(k for k, i in seg.heun.step_starts.items() if i == step - seg.first_step)
            if seg.std > 0:  # restart: the forward jump from σ̃_min up to σ̃_max
                x = scaled(x, seg.scale).add_(self.noise_like(x), alpha=seg.std)
            elif seg.scale != 1.0:
                x = x * seg.scale
            x = yield from seg.heun.loop(x, sub_start)
        return x

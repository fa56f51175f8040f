r"""``fitted``: a linear multistep method on the probability-flow ODE whose weights are fitted to one model on one grid
— iPNDM's step with a table of weights in place of Adams–Bashforth's, for any schedule.

In a view's variables y = x/c against its noise level ℓ (x̃ = x/s and σ̃ in the VE view, y = x/(s + σ) and
τ = σ/(s + σ) in the flow view; :func:`unisde.core.kernels.view_coefficients`) the PF-ODE reads dy/dℓ = d with
d = (y − D)/ℓ (Karras et al. 2022, eq. 4 [EDM]), and step i (from ℓ_i to ℓ_{i+1}, one model evaluation) is

    y_{i+1} = y_i + (ℓ_{i+1} − ℓ_i) Σ_j w_{i,j} d_{i−k+1+j},      Σ_j w_{i,j} = 1,

the loop of :class:`unisde.samplers.ipndm.IPNDMSampler`. Weights summing to 1 keep every step exact when D is
constant (d is then constant along the exact solution), whatever they are. The family holds Euler = DDIM (every row
``(1,)``), the gradient-estimation sampler (rows ``(1 − γ, γ)``, Permenter & Yuan 2024 [GradEst]), iPNDM's
constant-step and ``ipndm_v``'s variable-step Adams–Bashforth weights (Zhang & Chen 2023 [DEIS]); rows are oldest
first (row i's last entry weighs d_i, the entry before d_{i−1}, …) and row i has at most i + 1 entries.

The rows are fitted per model, grid and NFE by least squares against the model's own PF-ODE
(:func:`unisde.grids.optimize.optimize_grid` with ``fit_weights=True``, starting from the weights of the sampler
whose grid it fitted), as Bespoke solvers (Shaul et al. 2024 [Bespoke]) and S4S (Frankel et al. 2025 [S4S]) fit a
solver's coefficients to a model instead of deriving them from a Taylor expansion. With the fitted grid (the
``optimized`` grid's times) they are sampler options of the scheduler config, so ``save_pretrained`` carries them.
Without ``weights`` every step is Euler's (DDIM).

``corrector`` adds a fitted corrector, UniPC's free correction (Zhao et al. 2023, §3.1 [UniPC]) with fitted
weights as S4S fits both halves of a predictor–corrector pair: once the model has been evaluated at the predicted
y_{i+1}, that point is replaced by

    y_{i+1} ← y_i + (ℓ_{i+1} − ℓ_i) Σ_j c_{i,j} d_{i−k+2+j},      Σ_j c_{i,j} = 1,

whose last weight multiplies the new derivative d_{i+1} (evaluated at the predicted point, so the correction costs
no model call); the x̂0 of that evaluation is kept, so d_{i+1} is recomputed at the corrected point and the next
step predicts from there (UniPC keeps its model output the same way). Row i corrects the result of step i, so a
grid of n steps has n − 1 rows (the last step's result is the sample) and row i has at most i + 2 entries. A row
equal to step i's weights with a 0 appended is no correction; (…, 0, ½, ½) is the trapezoidal rule. Entered
mid-grid (img2img), a step whose row needs derivatives from before the entry takes the Euler step, and a
correction that needs them is skipped, until the history holds them: fitted weights belong to the full run they
were fitted on.

``evaluation_times`` decouples the time each model evaluation is told from the grid time its sample is at: the
model is evaluated at (y_i, t'_i) — its input scaling, timestep and output conversion all at t'_i — and the step
uses that x̂0 as the grid's own, d_i = (y_i − D)/ℓ_i. This is the Time-Shift sampler's coupling of a state with a
nearby time (Li et al. 2024 [TimeShift]), with the times fitted per model like the weights
(``optimize_grid(fit_evaluation_times=True)``). The starting noise belongs to the grid's first time, which the
drivers scale it for (``Sampler.start_time``). A run entered mid-grid (img2img) is refused: a pipeline noises its
image to the first evaluation's timestep, which is not the grid time of that sample.
"""

from __future__ import annotations

import math

import torch

from unisde.samplers.base import Option, view_option
from unisde.samplers.ipndm import IPNDMSampler


def _weights(value, extra: int = 0):
    """None when ``value`` is a valid weight table (rows of finite numbers, each summing to 1, row i at most
    i + 1 + ``extra`` long), else why not."""
    for i, row in enumerate(value):
        if isinstance(row, (str, bytes)) or not isinstance(row, (list, tuple)) or not row:
            return f"row {i} must be a non-empty list of numbers, got {row!r}"
        if any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) for w in row):
            return f"row {i} must hold finite numbers, got {list(row)!r}"
        if len(row) > i + 1 + extra:
            return f"row {i} weighs {len(row)} derivatives but step {i} has only {i + 1 + extra}"
        if abs(math.fsum(row) - 1.0) > 1e-9:
            return (
                f"row {i} sums to {math.fsum(row)!r}, not 1 (the weights of an average of derivatives: a sum of 1 "
                "keeps the step exact for a constant x̂0)"
            )
    return None


def _evaluation_times(value):
    """None when ``value`` is a valid list of evaluation times (finite, in (0, 1], strictly decreasing), else why."""
    if any(isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t <= 1 for t in value):
        return f"every time must be a number in (0, 1], got {list(value)!r}"
    if any(a <= b for a, b in zip(value, value[1:])):
        return f"the times must decrease strictly, got {list(value)!r}"
    return None


class FittedSampler(IPNDMSampler):
    name = "fitted"
    description = "linear multistep on the PF-ODE with weights fitted to the model (iPNDM's step; Bespoke / S4S)"
    default_grid = "config"
    options = {
        "weights": Option(
            (),
            (list, tuple),
            "one row of derivative weights per step, oldest first, each summing to 1 (fitted by optimize_grid with "
            "fit_weights=True); empty: Euler (DDIM) at every step",
            _weights,
        ),
        "corrector": Option(
            (),
            (list, tuple),
            "one row of corrector weights per step but the last, oldest first, each summing to 1, its last entry on "
            "the derivative at the predicted point (fitted by optimize_grid with fit_corrector=True); empty: no "
            "correction",
            lambda value: _weights(value, extra=1),
        ),
        "evaluation_times": Option(
            (),
            (list, tuple),
            "the time each model evaluation is told, one per step, in (0, 1] and decreasing (fitted by optimize_grid "
            "with fit_evaluation_times=True); empty: the grid's own times",
            _evaluation_times,
        ),
        "view": view_option(),
    }

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        """The user's options plus the multistep loop's own settings: a history as long as the longest row."""
        out = super().validate_options(options)
        for key in ("weights", "corrector"):
            out[key] = tuple(tuple(float(w) for w in row) for row in out[key])
        out["evaluation_times"] = tuple(float(t) for t in out["evaluation_times"])
        # the history holds what the longest predictor row and the corrector's older derivatives weigh
        longest = max([len(row) for row in out["weights"]] + [len(row) - 1 for row in out["corrector"]] + [1])
        return {**out, "max_order": longest, "denoise_to_zero": False}

    def prepare(self, grid):
        steps = grid.numel() - 1
        corrector = self.opts["corrector"]
        for name, rows, count, per in (
            ("weights", self.opts["weights"], steps, "one per step"),
            ("corrector", corrector, steps - 1, "one per step but the last"),
            ("evaluation_times", self.opts["evaluation_times"], steps, "one per step"),
        ):
            if rows and len(rows) != count:
                raise ValueError(
                    f"sampler 'fitted': {name} has {len(rows)} rows, {per}, but this grid has {steps} steps; use the "
                    "grid and step count the weights were fitted on (the config's time_grid_options)"
                )
        evaluations = super().prepare(grid)
        if self.opts["evaluation_times"]:
            self.start_time = float(grid[0])  # the noise is the grid's first time's; the model is told another
            evaluations = torch.tensor(self.opts["evaluation_times"], dtype=evaluations.dtype)
        s, ve = self.view_coefficients(grid)
        s, ve = self.floats(s), self.floats(ve)
        # correction i + 1 (of step i's result): y += (ℓ_{i+1} − ℓ_i)(c_new d_{i+1} + Σ_j (c_j − w_j) d_{i−j}),
        # the corrected combination minus the predicted one, as a multiple of x = c y, with the history it needs
        # (the loop skips it with less: entered mid-grid); evaluation 0 corrects nothing
        self.corrections = [None]
        for i, row in enumerate(corrector):
            predicted = self.step_weights(ve, i, len(self.opts["weights"][i]) if self.opts["weights"] else 1)
            older = tuple(reversed(row[:-1]))  # newest first, as the loop's history
            size = max(len(older), len(predicted))
            pad = lambda w: tuple(w) + (0.0,) * (size - len(w))  # noqa: E731
            scale = s[i + 1] * (ve[i + 1] - ve[i])
            self.corrections.append(
                (size, scale * row[-1], [scale * (c - w) for c, w in zip(pad(older), pad(predicted))])
            )
        return evaluations

    def loop(self, x, start=0):
        if start > 0 and self.opts["evaluation_times"]:
            raise ValueError(
                f"sampler 'fitted' with evaluation_times cannot enter the grid at evaluation {start} (img2img): the "
                "pipeline noises its image to that evaluation's time, not to the grid time the sampler steps from; "
                "use the config without evaluation_times for img2img"
            )
        return (yield from super().loop(x, start))

    def correct(self, k, x, denoised, history):
        """Correction k (of step k − 1's result) where the corrector has a row for it and the history holds what it
        weighs; the derivative of the kept x̂0 at the corrected point."""
        d = self._eps(k, x, denoised)
        if k == 0 or not self.opts["corrector"] or len(history) < self.corrections[k][0]:
            return x, d
        _, new, older = self.corrections[k]
        x = x.add(d, alpha=new)  # a new tensor: the caller's sample is left as it was
        for w, dj in zip(older, history):
            x = x.add_(dj, alpha=w)
        return x, self._eps(k, x, denoised)

    def step_weights(self, ve, k, order):
        """Row k newest first; Euler's (1) where the loop has fewer derivatives than the row weighs (entered
        mid-grid)."""
        row = self.opts["weights"][k] if self.opts["weights"] else (1.0,)
        return tuple(reversed(row)) if order >= len(row) else (1.0,)

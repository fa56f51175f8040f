r"""Inversion: running a deterministic sampler from data to noise (PF-ODE encoding).

The probability-flow ODE (Song et al. 2021, eq. 13 [SDE]) is reversible: integrated upwards in t it maps data
to the latent noise the same ODE integrated downwards maps back (Song, Meng & Ermon 2021 [DDIM], who encode
images with DDIM this way). Every deterministic unisde sampler is written in (s, σ) coefficients that hold in
either direction, so an *increasing* grid is all an inversion needs. The driver builds decreasing grids
(t_0 > … > t_n, the sampling direction; :func:`unisde.grids.append_final`), so both samplers here take that
grid and walk it upwards — the same times a forward pass with the same grid visits, which is what inversion
pipelines need (they invert on the timesteps they will later sample on).

``inverse`` (any deterministic sampler): ``InverseSampler(schedule, invert="ddim", invert_options={...})``
prepares the inner sampler on the reversed grid t_n < … < t_0 and runs its loop unchanged (evaluation at the
start of each step, as the solver is written). An explicit solver cannot start at σ = 0 (ε̂ = (x − s x̂0)/σ is
undefined there), so on a grid ending on the clean data (t_n = 0) the first step 0 → t_{n−1} is the
``ddim_inverse`` step below (the model evaluated at t_{n−1}; for the PF-ODE of a Gaussian its error is
O(σ̃(t_{n−1})²)), and the inner sampler takes over from t_{n−1}: n steps, as many evaluations as the forward
pass. Encoding then decoding with the same sampler on the same grid returns the input to within the solvers'
errors (both ways O(h^p)). Stochastic samplers have no inverse: a noise draw inside the loop is a ValueError.

``ddim_inverse`` (diffusers' DDIMInverseScheduler): DDIM upwards with the model evaluated at the *target* of
each step — ε̂ of the model fed the current sample x_a and the next timestep t_b, the usual DDIM-inversion
approximation ε̂(x_a, t_a) ≈ ε̂(x_a, t_b) (as in Mokady et al. 2023 [NullText]) that lets the first step start
from the data itself (σ = 0):

    x̂0 = (x_a − σ_a ε̂)/s_a,     x_b = s_b x̂0 + σ_b ε̂,     ε̂ = (x_a − s_b D(x_a; t_b))/σ_b.

The evaluation times are the grid's times in increasing order; step k goes from a_k to b_k = its evaluation time,
with a_k the previous evaluation time (a_0 = the grid's end, 0 = data, or the first training index with
``set_alpha_to_one=False``), or with ``diffusers_source_index`` the training index τ_k − ⌊N/n⌋ diffusers uses
(the same for leading spacing; trailing spacing with n not dividing N makes the sample at τ_{k−1} pass for one at
τ_k − ⌊N/n⌋). diffusers clips x̂0 *at the source time* (``clip_sample``, on by default in that class): that x̂0
is the sampler's own, so the clip is a sampler option here (a config's ``clip_sample`` and
``clip_sample_range`` fill it). ε̂ is read from the unclipped x̂0 the driver passes as ``raw_denoised``.
"""

from __future__ import annotations

import torch

from unisde.core.kernels import lincomb, schedule_coefficients
from unisde.samplers.base import Option, Sampler, positive


def _coefficients(schedule, times: torch.Tensor, data: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(s, σ) at the given times; where ``data`` is True the point is the clean data (s = 1, σ = 0) — the grid's
    end point t = 0, which on VE/EDM schedules differs from an evaluation at t = 0 (σ = σ_min)."""
    s, sigma = schedule_coefficients(schedule, times)
    if data is None:
        return s, sigma
    return torch.where(data, torch.ones_like(s), s), torch.where(data, torch.zeros_like(sigma), sigma)


class DDIMInverseSampler(Sampler):
    name = "ddim_inverse"
    encodes = True  # runs from data to noise: its evaluation times increase
    description = "DDIM inversion (data → noise), the model evaluated at each step's target (diffusers' DDIMInverse)"
    default_grid = "config"
    options = {
        "set_alpha_to_one": Option(
            True,
            (bool,),
            "the first step starts on the data (ᾱ = 1); False: at the first "
            "training index (diffusers' set_alpha_to_one); a config's value fills it",
        ),
        "clip_sample": Option(
            False,
            (bool,),
            "clip x̂0 at the step's source time to ±clip_sample_range "
            "(diffusers' DDIMInverseScheduler); a config's clip_sample fills it",
        ),
        "clip_sample_range": Option(1.0, (float,), "the clipping range", positive),
        "diffusers_source_index": Option(
            False,
            (bool,),
            "on a table, start step k at the training index "
            "τ_k − ⌊N/n⌋ (diffusers) instead of at the previous evaluation time",
        ),
    }

    def prepare(self, grid):
        self.grid = self.floats(grid)
        evals = grid[:-1].flip(0)  # b_k, increasing
        sources = torch.cat([grid[-1:], evals[:-1]])
        data = torch.zeros_like(sources, dtype=torch.bool)
        data[0] = float(grid[-1]) == 0.0  # the first step starts on the clean data
        sched = self.schedule
        if sched.is_discrete:
            if self.opts["diffusers_source_index"]:
                num_train, n = sched.num_train_timesteps, evals.numel()
                index = (sched.timestep(evals).round() - num_train // n).clamp(max=num_train - 1)
                data = index < 0
                sources = torch.where(data, torch.zeros_like(index), (index + 1) / num_train)
            if not self.opts["set_alpha_to_one"]:  # start at the first training index instead of on the data
                sources = torch.where(data, torch.full_like(sources, 1.0 / sched.num_train_timesteps), sources)
                data = torch.zeros_like(data)
        s_a, sigma_a = _coefficients(sched, sources, data)
        s_b, sigma_b = _coefficients(sched, evals)
        self.s_a, self.sigma_a = self.floats(s_a), self.floats(sigma_a)
        self.s_b, self.sigma_b = self.floats(s_b), self.floats(sigma_b)
        return evals

    def loop(self, x, start=0):
        clip = self.opts["clip_sample_range"] if self.opts["clip_sample"] else None
        for k in range(start, len(self.s_b)):
            x, denoised = yield x
            raw = denoised if self.raw_denoised is None else self.raw_denoised
            s_a, sigma_a, s_b, sigma_b = self.s_a[k], self.sigma_a[k], self.s_b[k], self.sigma_b[k]
            eps = lincomb(x, 1.0 / sigma_b, raw, -s_b / sigma_b)  # ε̂ of the model at (x_a, t_b)
            if clip is None:  # x_b = (s_b/s_a) x_a + (σ_b − s_b σ_a/s_a) ε̂
                x = lincomb(x, s_b / s_a, eps, sigma_b - s_b * sigma_a / s_a)
            else:
                x0 = lincomb(x, 1.0 / s_a, eps, -sigma_a / s_a).clamp_(-clip, clip)
                x = lincomb(x0, s_b, eps, sigma_b)
        return x


class InverseSampler(Sampler):
    name = "inverse"
    encodes = True  # runs from data to noise: its evaluation times increase
    aliases = ("encode",)
    description = "any deterministic sampler run from data to noise on the reversed grid (PF-ODE encoding)"
    default_grid = "config"
    options = {
        "invert": Option("ddim", (str,), "the deterministic sampler to invert (a registered name)"),
        "invert_options": Option(None, (dict, type(None)), "its options"),
    }

    def __init__(self, schedule, **options):
        super().__init__(schedule, **options)
        from unisde.plugins import get_sampler

        inner_cls = get_sampler(self.opts["invert"])
        if inner_cls.name in (self.name, DDIMInverseSampler.name):
            raise ValueError(
                f"sampler 'inverse': cannot invert {inner_cls.name!r}, which already runs from data to noise"
            )
        if getattr(inner_cls, "needs_uncond", False):
            raise ValueError(
                f"sampler 'inverse': cannot invert {inner_cls.name!r}: it needs the unconditional x̂0 beside the guided "
                "one (CFG++), which this sampler's loop does not pass on; invert its base sampler"
            )
        self.inner = inner_cls(schedule, **(self.opts["invert_options"] or {}))
        self.default_grid = self.inner.default_grid

    @property
    def order(self):
        return self.inner.order

    def prepare(self, grid):
        self.grid = self.floats(grid)
        upward = grid.flip(0)
        self.first_step = None
        if float(upward[0]) == 0.0:  # from the data (σ = 0): one DDIM-inversion step to t_{n−1} first
            if upward.numel() < 2:
                raise ValueError("sampler 'inverse': the grid needs at least one step above t = 0")
            # x_b = s_b x + σ_b ε̂ with ε̂ = (x − s_b D(x; t_b))/σ_b: only s_b is needed
            self.first_step = float(_coefficients(self.schedule, upward[1:2])[0][0])
            upward = upward[1:]
        self.inner_steps = upward.numel() > 1
        inner_times = self.inner.prepare(upward) if self.inner_steps else upward[:0]
        return inner_times if self.first_step is None else torch.cat([upward[:1], inner_times])

    def _refuse_noise(self, sample):
        raise ValueError(
            f"sampler 'inverse': {self.inner.name!r} drew noise, and a stochastic sampler has no inverse; "
            "use a deterministic one (e.g. eta=0 for ddim)"
        )

    def loop(self, x, start=0):
        inner = self.inner
        inner.noise_sampler, inner.pipeline_eta = self._refuse_noise, None
        if self.first_step is not None:
            if start == 0:
                x, denoised = yield x
                raw = denoised if self.raw_denoised is None else self.raw_denoised
                x = lincomb(x, 1.0 + self.first_step, raw, -self.first_step)  # s_b x + (x − s_b D)
            start = max(start - 1, 0)
        if not self.inner_steps:
            return x
        loop = inner.loop(x, start)
        x = next(loop)
        while True:
            received = yield x
            inner.raw_denoised, inner.extra = self.raw_denoised, self.extra
            try:
                x = loop.send(received)
            except StopIteration as done:
                return done.value

r"""``pndm``: pseudo linear multistep (PLMS; Liu et al. 2022 [PNDM], arXiv:2202.09778) — Adams–Bashforth on the
noise estimate ε̂ with DDIM's step as the transfer, for any schedule.

DDIM's deterministic step (:mod:`unisde.samplers.ddim`, η = 0) carries x from t to t' given an ε̂ — the
transfer part φ of Liu et al. 2022, eq. 9 [PNDM]:

    φ(x, ε̂; t → t') = (s_{t'}/s_t) x + (σ_{t'} − s_{t'} σ_t/s_t) ε̂
                     (x̂0 = (x − σ_t ε̂)/s_t, then s_{t'} x̂0 + σ_{t'} ε̂).

It is evaluated in data-prediction form from the step's start point, s_{t'} D + σ_{t'} ε̂_t + k (ε̂ − ε̂_t) with
ε̂_t = (x − s_t D)/σ_t and k = σ_{t'} − s_{t'} σ_t/s_t (the same value): the ε-form's terms of size
(s_{t'}/s_t)·|x| cancel, and from a zero-terminal-SNR start (s_t ≈ 2⁻¹², s_{t'}/s_t ≈ 40 at 10 steps) that cost
float16 / bfloat16 all their digits (output std 2.6 / 14.8 where float32 gives 0.49; now 1 % / 5 % off float32).

PLMS replaces ε̂ by the Adams–Bashforth combination of the last evaluations, with the constant-step weights
(1), (3, −1)/2, (23, −16, 5)/12, (55, −59, 37, −9)/24 (Liu et al. 2022, eq. 12 [PNDM]). Its warm-up is diffusers'
PNDMScheduler with ``skip_prk_steps=True`` (the Stable Diffusion setting): the first step is taken twice — a
DDIM step from t_0 to t_1, a model call there, and the step from t_0 again with the average of the two ε̂
(Heun's method in the DDIM transfer) — so t_1 appears twice in ``timesteps`` and n steps cost n + 1 model
calls. ε̂ = (x − s D)/σ comes from the denoised estimate, so it runs with every parameterisation;
``UnifiedScheduler.from_config`` of a PNDM config with ``skip_prk_steps=True`` selects it.

``prk_warmup=True`` is diffusers' default warm-up (``skip_prk_steps=False``; F-PNDM, Liu et al. 2022, eq. 13
[PNDM]), selected by ``from_config`` of such a config: the first three steps are pseudo Runge–Kutta steps, RK4's
stages in the transfer — from (x_i, ε̂_i) at t_i, call 2 at the midpoint m_i on φ(x_i, ε̂_i; t_i → m_i), call 3
at m_i on φ(x_i, ε̂_2; t_i → m_i), call 4 at t_{i+1} on φ(x_i, ε̂_3; t_i → t_{i+1}), and the step
x_{i+1} = φ(x_i, (ε̂_i + 2 ε̂_2 + 2 ε̂_3 + ε̂_4)/6; t_i → t_{i+1}); the ε̂_i at the three step starts are PLMS's
history, so PLMS starts at fourth order at t_3: n steps cost n + 9 calls. On a table whose grid points are
training indices j the midpoint is diffusers' index j_{i+1} + (N//n)//2 (the middle of an evenly spaced step),
else the mid time (t_i + t_{i+1})/2. diffusers needs n ≥ 4 (its set_timesteps fails below); here the warm-up
covers min(3, n − 1) steps, so the last step is always PLMS and no call falls below the last grid time.

diffusers computes where a step lands from the timestep it is fed: t − N//n (PLMS, as DDIM) and t − (N//n)//2
(the first RK stage). That is the next call's timestep on evenly spaced grids (leading, trailing with n | N)
with an even N//n, where the two agree to float32 rounding. With an odd N//n (n = 8 on 1000 indices: 125) the
first RK stage moves the sample from t_i to t_i − 62 (875 → 813) while the next call evaluates at the midpoint
t_{i+1} + 62 (812): ``diffusers_stage_target=True`` (set by ``from_config`` of a PNDM config) steps there too; by
default this loop steps between its own evaluation points. With linspace spacing (or trailing with n ∤ N) the
PLMS step t − N//n also misses the next timestep; that is not reproduced (the timesteps still agree). Its
v_prediction combines the raw v outputs and converts them with the step's start sample; this loop combines ε̂
(the method's variable), as for PLMS.

The loop keeps the ε̂ history locally. Entered mid-grid (img2img) at a call k > 0, it has neither the first
sample nor earlier ε̂: it takes DDIM's step from its own evaluation point to the end of call k's step (for k = 1,
which evaluates at t_1 and would redo t_0 → t_1, that leaves x where it is), and Adams–Bashforth builds up again
from there. ``entry="restart"`` (set by ``from_config`` of a PNDM config with ``skip_prk_steps=True``) instead does
what diffusers' PNDMScheduler does in an img2img pipeline: its counter restarts at the first call it is fed, so the
two-call warm-up runs again from the entry, and its second call, fed the next timestep, brings the sample only to
that timestep; every later call steps from the timestep it is fed, one grid step ahead of the sample (entered at
call 1, whose t_1 comes twice, the corrector also takes the entry sample for one at t_0). With the PRK warm-up
DDIM's step from the own point applies to each call of an RK step entered inside it (the midpoint calls step to
m_i and t_{i+1}, the call at t_{i+1} to t_{i+1}: x stays); entered at a step start t_i it takes the
remaining RK steps, then PLMS with the ε̂ they gave (lower order first). diffusers' PNDM has no
``set_begin_index`` and its RK counter restarts from timesteps[0] whatever the pipeline feeds, so its img2img
with RK steps has no well-defined result to match.

φ is Euler on the PF-ODE dx̃/dσ̃ = ε̂ in the VE view, and ε̂ = (x̃ − D)/σ̃ its derivative: ``view``
(:func:`unisde.core.kernels.view_coefficients`) runs the same method in y = x/(s + σ) against τ = σ/(s + σ), s
replaced by s + σ above (the derivative then is the velocity (y − D)/τ), exact at s = 0. ``"auto"`` (default)
takes it where the schedule reaches zero SNR at t = 1: in σ̃ the Heun warm-up's trapezoid spans σ̃ from the cap
4096 to O(1) (rectified flow, 5 steps: error 3.35 in σ̃, 0.045 in τ). diffusers' PNDM steps in σ̃: its converter
sets ``view="ve"``.
"""

from __future__ import annotations

import torch

from unisde._tensor import scaled
from unisde.core.kernels import lincomb
from unisde.samplers.base import Option, Sampler, view_option

# Adams–Bashforth weights on ε̂_k, ε̂_{k−1}, … for constant steps (Liu et al. 2022, eq. 12 [PNDM])
AB_WEIGHTS = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


class PNDMSampler(Sampler):
    name = "pndm"
    aliases = ("plms",)
    description = "PLMS: 4th-order Adams–Bashforth on ε̂ in DDIM's transfer, diffusers' PNDM (RK warm-up optional)"
    default_grid = "config"
    final_from_config = True  # honours set_alpha_to_one=False (end at index 0), as diffusers' PNDM does
    eps_is_model_eps = False  # set by prepare: whether ε̂ of the view is the model's ε (see _eps)
    options = {
        "prk_warmup": Option(
            False,
            (bool,),
            "diffusers' default warm-up (skip_prk_steps=False): the first three "
            "steps are pseudo Runge–Kutta steps of four model calls each",
        ),
        "entry": Option(
            "ddim",
            (str,),
            "how a loop entered mid-grid (img2img) starts without the PRK warm-up: ddim (DDIM's step from the "
            "entry, Adams–Bashforth building up from there) or restart (diffusers' PNDMScheduler, whose counter "
            "restarts at the first call it sees: the two-call warm-up runs from the entry and its second call, "
            "fed the next timestep, leaves the sample one grid step behind the timesteps it is fed)",
            choices=("ddim", "restart"),
        ),
        "diffusers_stage_target": Option(
            False,
            (bool,),
            "with the PRK warm-up on a table: the first RK stage moves the sample to the index t_i − (N//n)//2, "
            "as diffusers' PNDMScheduler does, while the next call evaluates at the midpoint index "
            "t_{i+1} + (N//n)//2 (the two differ when N//n is odd or the spacing uneven); False: to the midpoint",
        ),
        "view": view_option(),
    }

    def prepare(self, grid):
        """Per model call: the transfer φ of the step it takes (from grid point a to b), the same transfer from
        the call's own evaluation point (for a loop entered there), and ε̂ = (x − s D)/σ at that point. Calls 0
        and 1 are the warm-up (both step t_0 → t_1), call j ≥ 2 steps t_{j−1} → t_j. With the PRK warm-up calls
        4i … 4i + 3 are RK step i (all from t_i), then call 4P + j' steps t_{P+j'} → t_{P+j'+1} (P RK steps)."""
        self.grid = self.floats(grid)
        if self.opts["diffusers_stage_target"] or self.opts["entry"] == "restart":
            self._check_diffusers_strides(grid)
        s, level = self.view_coefficients(grid)  # below s is the view's scale c (s itself in the VE view); c ℓ = σ
        s, sigma = self.floats(s), self.floats(s * level)
        n = grid.numel() - 1
        self.prk_steps = min(3, n - 1) if self.opts["prk_warmup"] else 0
        # point n + 1 + i: the midpoint m_i of PRK step i; point n + 1 + P + i: the first stage's target (m_i, or
        # diffusers' index t_i − (N//n)//2 with diffusers_stage_target)
        mids, targets = self._midpoints(grid, self.prk_steps)
        times = torch.cat([grid, mids])
        if self.prk_steps:  # RK4 step i from t_i: calls at t_i, m_i, m_i, t_{i+1}, each stage stepping from t_i
            s_mid, level_mid = self.view_coefficients(torch.cat([mids, targets]))
            s, sigma = s + self.floats(s_mid), sigma + self.floats(s_mid * level_mid)
            p = n + 1 + self.prk_steps
            steps = [(i, b) for i in range(self.prk_steps) for b in (p + i, n + 1 + i, i + 1, i + 1)]
            evals = [e for i in range(self.prk_steps) for e in (i, n + 1 + i, n + 1 + i, i + 1)]
            steps += [(j, j + 1) for j in range(self.prk_steps, n)]  # then PLMS, call j at t_j
            evals += list(range(self.prk_steps, n))
        else:
            steps = [(0, 1)] + ([(0, 1)] + [(j - 1, j) for j in range(2, n + 1)] if n >= 2 else [])
            evals = [0] + ([1] + list(range(1, n)) if n >= 2 else [])  # grid index of each call's evaluation
        if any(sigma[e] <= 0 for e in evals):
            raise ValueError("sampler 'pndm' needs positive noise levels at every evaluation time")
        self.transfer, self.transfer_here, self.eps_coefs = [], [], []
        for (a, b), e in zip(steps, evals):
            self.transfer.append((s[b], sigma[b], sigma[b] - s[b] * sigma[a] / s[a]))  # see _transfer
            self.transfer_here.append((s[b], sigma[b], sigma[b] - s[b] * sigma[e] / s[e]))
            self.eps_coefs.append((1.0 / sigma[e], -s[e] / sigma[e]))
        self.restart = self._restart_steps(s, sigma, evals) if not self.prk_steps else []
        self.eps_is_model_eps = self.view == "ve"  # c = s: ε̂ is the forward process's ε (the flow view's is not)
        return times[torch.tensor(evals)]

    @staticmethod
    def _restart_steps(s, sigma, evals):
        """Per call c, diffusers' warm-up restarted there (``entry="restart"``). diffusers steps a call fed grid
        point g to g + 1 (t − N//n) and its warm-up's second call, fed g', from g' − 1 to g' (t + N//n → t) with the
        first call's sample: the predictor's transfer, then the corrector's transfer and, where g' − 1 is not the
        first call's point (an entry at call 1, whose timestep t_1 comes twice), the coefficients that re-read the
        first call's sample as one at g' − 1: D' = (x − σ ε̂)/s there. None for the corrector after the last call."""

        def transfer(a, b):
            return s[b], sigma[b], sigma[b] - s[b] * sigma[a] / s[a]

        out = []
        for c, g in enumerate(evals):
            corrector = None
            if c + 1 < len(evals):
                a, b = evals[c + 1] - 1, evals[c + 1]
                corrector = (transfer(a, b), None if a == g else (1.0 / s[a], -sigma[a] / s[a]))
            out.append((transfer(g, g + 1), corrector))
        return out

    def loop(self, x, start=0):
        eps_history = []  # ε̂ of the previous steps, newest first (the Adams–Bashforth history of this loop)
        k = start
        if self.prk_steps:  # PRK warm-up: RK4 in φ (Liu et al. 2022, eq. 13), calls at t_i, m_i, m_i, t_{i+1}
            while k < 4 * self.prk_steps:
                if k % 4:  # entered inside an RK step: DDIM's step from each remaining call's own point
                    x, denoised = yield x
                    x = self._transfer(self.transfer_here[k], denoised, self._eps(k, x, denoised))
                    k += 1
                    continue
                x, denoised_a = yield x  # at the step's start t_i; every stage steps from (x_i, ε̂_i)
                eps_a = self._eps(k, x, denoised_a)
                eps_history = [eps_a, *eps_history[:2]]
                x = self._transfer(self.transfer[k], denoised_a, eps_a)
                total = None  # Σ w_j (ε̂_j − ε̂_i) with weights 1/3, 1/3, 1/6 (ε̂_i's 1/6 makes them sum to 1)
                for stage, weight in ((1, 1 / 3), (2, 1 / 3), (3, 1 / 6)):
                    x, denoised = yield x
                    delta = torch.sub(self._eps(k + stage, x, denoised), eps_a)
                    total = scaled(delta, weight) if total is None else total.add_(delta, alpha=weight)
                    x = self._transfer(self.transfer[k + stage], denoised_a, eps_a, total if stage == 3 else delta)
                k += 4
        elif start == 0:  # warm-up (diffusers' skip_prk_steps): Heun's method in the DDIM transfer for t_0 → t_1
            x, denoised_first = yield x
            eps_first = self._eps(0, x, denoised_first)
            x = self._transfer(self.transfer[0], denoised_first, eps_first)  # DDIM predictor
            if len(self.transfer) == 1:
                return x
            x, denoised = yield x  # at t_1
            delta = (self._eps(1, x, denoised) - eps_first) * 0.5  # ε̂_avg − ε̂_first
            x = self._transfer(self.transfer[1], denoised_first, eps_first, delta)  # t_0 → t_1 again
            eps_history, k = [eps_first], 2
        elif start < len(self.transfer) and self.opts["entry"] == "restart":  # diffusers' warm-up from the entry
            predictor, corrector = self.restart[start]
            x_first, denoised_first = yield x
            eps_first = self._eps(start, x_first, denoised_first)
            x = self._transfer(predictor, denoised_first, eps_first)
            if corrector is None:
                return x
            x, denoised = yield x
            delta = (self._eps(start + 1, x, denoised) - eps_first) * 0.5  # ε̂_avg − ε̂_first
            coefs, reread = corrector
            if reread is not None:  # the first sample taken for one at the grid point before the corrector's
                denoised_first = lincomb(x_first, reread[0], eps_first, reread[1])
            x = self._transfer(coefs, denoised_first, eps_first, delta)
            eps_history, k = [eps_first], start + 2
        elif start < len(self.transfer):  # entered mid-grid: DDIM's step from this call's own point
            x, denoised = yield x
            eps = self._eps(start, x, denoised)
            x = self._transfer(self.transfer_here[start], denoised, eps)
            eps_history, k = [eps], start + 1
        for k in range(k, len(self.transfer)):  # PLMS: Adams–Bashforth on ε̂ (Liu et al. 2022, eq. 12), then φ
            x, denoised = yield x
            eps_history = [self._eps(k, x, denoised), *eps_history[:3]]
            weights = AB_WEIGHTS[len(eps_history) - 1]
            delta = None  # ε̂_AB − ε̂_k = (w_0 − 1) ε̂_k + Σ_{j≥1} w_j ε̂_{k−j}  (the weights sum to 1)
            if len(eps_history) > 1:
                delta = scaled(eps_history[0], weights[0] - 1.0)
                for w, e in zip(weights[1:], eps_history[1:]):
                    delta.add_(e, alpha=w)
            x = self._transfer(self.transfer[k], denoised, eps_history[0], delta)
        return x

    def _midpoints(self, grid, count):
        """Times of the midpoint calls of PRK steps 0 … count−1 and of their first stages' targets (float64). On a
        table whose step ends t_{i+1} are training indices j (t = (j + 1)/N): index j + (N // n) // 2, diffusers'
        PNDM rule, so the model gets diffusers' timesteps (the middle of the step on an evenly spaced grid;
        linspace's steps are N/n ± 1, its midpoints are still diffusers'); where that misses the step, the index
        (j_i + j_{i+1}) // 2. Elsewhere (closed forms, fractional grids) the mid time (t_i + t_{i+1})/2. The target
        is the midpoint, or with ``diffusers_stage_target`` on a table diffusers' j_i − (N // n) // 2 (its
        ``_step_prk`` steps the fed timestep back by that much): one index above the midpoint call when N // n is
        odd (n = 8 on 1000 indices: 813 against 812)."""
        sched, n, out, targets = self.schedule, grid.numel() - 1, [], []
        big_n = sched.num_train_timesteps if sched.is_discrete and sched.num_train_timesteps else None
        for hi, lo in zip(self.grid[:count], self.grid[1 : count + 1]):
            if big_n is not None:
                j_hi, j_lo = hi * big_n - 1, lo * big_n - 1
                if j_lo >= 0 and abs(j_hi - round(j_hi)) < 1e-6 and abs(j_lo - round(j_lo)) < 1e-6:
                    j_hi, j_lo = round(j_hi), round(j_lo)
                    half = (big_n // n) // 2
                    mid = j_lo + half
                    out.append(((mid if mid < j_hi else (j_hi + j_lo) // 2) + 1) / big_n)
                    target = j_hi - half
                    use = self.opts["diffusers_stage_target"] and j_lo <= target < j_hi
                    targets.append((target + 1) / big_n if use else out[-1])
                    continue
            out.append(0.5 * (hi + lo))
            targets.append(out[-1])
        return tuple(torch.tensor(v, dtype=grid.dtype, device=grid.device) for v in (out, targets))

    def _check_diffusers_strides(self, grid):
        """The twin of diffusers' PNDMScheduler steps between grid points; diffusers steps from t to t − N//n
        whatever the spacing lists next. Where the two differ (linspace; trailing with n not dividing N) the twin
        would silently give other images: a ValueError before any work instead."""
        sched, n = self.schedule, grid.numel() - 1
        if not (sched.is_discrete and sched.num_train_timesteps) or n < 2:
            return
        big_n = sched.num_train_timesteps
        index = [round(t * big_n - 1) for t in self.grid[:-1]]
        strides = {a - b for a, b in zip(index, index[1:])}
        if strides != {big_n // n}:
            raise ValueError(
                f"PNDMScheduler's twin cannot run this grid: diffusers' PNDM steps from t to t − N//n = t − "
                f"{big_n // n}, but the spacing lists strides {sorted(strides)} (linspace, or trailing with "
                f"num_inference_steps={n} not dividing {big_n}), so its samples land between its own timesteps; "
                "use timestep_spacing='leading' (or a step count that divides N), or pass sampler='pndm' for "
                "PLMS between the grid points"
            )

    @staticmethod
    def _transfer(coefs, denoised, eps, delta=None):
        """φ in data-prediction form from the step's start point a, where x_a = s_a D + σ_a ε̂_a:
        φ(x_a, ε̂_a + δ) = s_b D + σ_b ε̂_a + k δ with k = σ_b − s_b σ_a/s_a. Algebraically the ε-form
        (s_b/s_a) x_a + k (ε̂_a + δ), but without its terms of size (s_b/s_a)·|x| that cancel each other: at a
        zero-terminal-SNR start (s_a ≈ 2⁻¹², s_b/s_a ≈ 40) they cost float16/bfloat16 all their digits."""
        s_b, sigma_b, k = coefs
        x = lincomb(denoised, s_b, eps, sigma_b)
        return x if delta is None else x.add_(delta, alpha=k)

    def _eps(self, k, x, denoised):
        """ε̂ = (x − c D)/σ at call k's evaluation point (c the view's scale), called during the send of that
        evaluation: in the VE view (c = s) the model's own ε where the driver passes it (:attr:`model_eps`; the
        caller's tensor, read only), as diffusers' PNDM reads it."""
        if self.model_eps is not None and self.eps_is_model_eps:
            return self.model_eps
        return lincomb(x, self.eps_coefs[k][0], denoised, self.eps_coefs[k][1])

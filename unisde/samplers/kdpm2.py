r"""``dpm_2`` and ``dpm_2_ancestral``: k-diffusion's DPM-2 samplers (diffusers' KDPM2 and KDPM2Ancestral) — a
midpoint method on the probability-flow ODE in the VE view, for any schedule.

In the VE view x̃ = x/s, σ̃ = σ/s every schedule's PF-ODE is dx̃/dσ̃ = d(x̃, σ̃) = (x̃ − D(x̃; σ̃))/σ̃ (Karras et
al. 2022, eqs. 1 and 4 [EDM]). One step from σ̃_i to a target σ̃_T takes the midpoint rule with the midpoint at
the geometric mean σ̃_m = √(σ̃_i σ̃_T) — the middle of the step in log σ̃, i.e. in the log-SNR, as DPM-Solver-2
places it (Lu et al. 2022a, Algorithm 1 with r = ½ [DPMSolver]) — and Euler moves (k-diffusion's
``sample_dpm_2``, "inspired by DPM-Solver-2 and Algorithm 2 of Karras et al. 2022"):

    d_i = (x̃_i − D(x̃_i; σ̃_i))/σ̃_i,   x̃_m = x̃_i + (σ̃_m − σ̃_i) d_i,
    d_m = (x̃_m − D(x̃_m; σ̃_m))/σ̃_m,   x̃_T = x̃_i + (σ̃_T − σ̃_i) d_m.

A step to σ̃_T = 0 is one Euler step, x̃_T = D(x̃_i; σ̃_i). ``dpm_2`` steps to σ̃_T = σ̃_{i+1}. ``dpm_2_ancestral``
steps to σ̃_down and adds fresh noise of std σ̃_up (k-diffusion's ``get_ancestral_step``):

    σ̃_up = min(σ̃_{i+1}, η √(σ̃_{i+1}² (σ̃_i² − σ̃_{i+1}²)/σ̃_i²)),   σ̃_down = √(σ̃_{i+1}² − σ̃_up²),
    x̃_{i+1} = x̃_T + S_noise σ̃_up z,

so x̃_{i+1} has σ̃_{i+1}'s noise level again; η = 1 is DDPM's posterior variance seen in the VE view (as for
EulerAncestral). Samples live in the model's own space, x = s x̃ with s taken at the time of each σ̃ (the
midpoint's time t_m solves σ̃(t_m) = σ̃_m), so the samplers run with every schedule and parameterisation. Two
model calls per step (one on a step to σ̃ = 0), listed in order: t_0, t_{m,0}, t_1, t_{m,1}, …, t_{n−1} — the
interleaved ``timesteps`` of diffusers' KDPM2 schedulers, whose configs convert to these samplers (with
``view="ve"``).

``view`` (:func:`unisde.core.kernels.view_coefficients`; ``"auto"``, the default, is ``"flow"`` where the schedule
reaches zero SNR at t = 1): in the flow view the same steps run in y = x/(s + σ) against τ = σ/(s + σ), the
midpoint at √(τ_i τ_T), as ComfyUI runs ``sample_dpm_2`` on flow models. ``dpm_2_ancestral`` then takes the
rectified-flow ancestral step (:func:`unisde.core.kernels.rf_ancestral_step`, ComfyUI's
``sample_dpm_2_ancestral_RF``): DPM-2 down to τ_d = τ'(1 + (τ'/τ − 1) η), then the forward process from τ_d to τ',
y' = r y_d + ς z with r = (1 − τ')/(1 − τ_d), ς² = τ'² − r² τ_d² — the flow view's counterpart of σ̃_up, which keeps
the marginal at τ' exact ((1 − τ_d) x0 + τ_d ε becomes (1 − τ') x0 + τ' ε). η > 1 is capped at τ_d = 0.
"""

from __future__ import annotations

import math

import torch

from unisde._tensor import scaled
from unisde.core.kernels import lincomb, rf_ancestral_step
from unisde.samplers.base import Option, Sampler, non_negative, positive, view_option


def ancestral_step(ve_from: float, ve_to: float, eta: float) -> tuple[float, float]:
    """(σ̃_down, σ̃_up) of an ancestral step from σ̃ = ``ve_from`` to ``ve_to`` (k-diffusion's get_ancestral_step),
    σ̃_down = σ̃_to √(1 − η² (1 − r²)) with r = σ̃_to/σ̃_from: the same value without σ̃_to² − σ̃_up²'s cancellation (which
    makes diffusers' float32 KDPM2Ancestral return NaN once σ̃_from/σ̃_to ≳ 3·10³, e.g. a cosine table's first step)."""
    if not eta or ve_to == 0.0:
        return ve_to, 0.0
    keep = 1.0 - eta**2 * (1.0 - (ve_to / ve_from) ** 2)  # (σ̃_down/σ̃_to)²
    if keep <= 0.0:  # σ̃_up capped at σ̃_to
        return 0.0, ve_to
    return ve_to * math.sqrt(keep), ve_to * eta * math.sqrt(1.0 - (ve_to / ve_from) ** 2)


def _affine(x: torch.Tensor, cx: float, y: torch.Tensor, cy: float) -> torch.Tensor:
    """cx·x + cy·y, exactly cy·y where cx = 0 (a step to σ̃ = 0 is D itself, whatever x holds)."""
    return scaled(y, cy) if cx == 0.0 else lincomb(x, cx, y, cy)


class DPM2Sampler(Sampler):
    name = "dpm_2"
    aliases = ("kdpm2",)
    description = "DPM-2 (k-diffusion sample_dpm_2, diffusers KDPM2): midpoint at √(σ̃_i σ̃_{i+1}) on the PF-ODE in σ̃"
    default_grid = "karras"
    order = 2  # model calls per step (diffusers' KDPM2 `order`; a step to σ̃ = 0 takes one)
    options: dict = {"view": view_option()}

    def ancestral(self, level_from: float, level_to: float) -> tuple[float, float, float]:
        """(ℓ_d the deterministic part steps to, r, ς): the view's forward process then carries y from ℓ_d to
        ``level_to`` as y' = r y_d + ς z (no noise here: ℓ_d = ``level_to``, r = 1, ς = 0)."""
        return level_to, 1.0, 0.0

    def prepare(self, grid):
        """Per step i, in model space (x = c y with the view's scale c; c = s, ℓ = σ̃ in the VE view): the target
        ℓ_T = ℓ_d, the midpoint's time, the coefficients x_m = a x_i + b D_i, x_T = c_x x_i + c_m x_m + c_D D_m (or
        the Euler step x_T = a x_i + b D_i) with x_T = c_{i+1} r y_T, and the noise scale c_{i+1} S_noise ς."""
        self.grid = self.floats(grid)
        s, ve = self.view_coefficients(grid)
        ve, s = self.floats(ve), self.floats(s)
        n = len(ve) - 1
        if any(v <= 0 for v in ve[:-1]):
            level = "σ̃" if self.view == "ve" else "τ"
            raise ValueError(
                f"sampler {self.name!r} needs positive noise levels at every evaluation time; grid {level} = {ve[:-1]}"
            )
        targets = [self.ancestral(ve[i], ve[i + 1]) for i in range(n)]
        ve_mid = [math.sqrt(ve[i] * down) for i, (down, _, _) in enumerate(targets)]
        t_mid = self.view_times(torch.tensor([v if v > 0 else 1.0 for v in ve_mid], dtype=torch.float64))
        s_mid = self.floats(self.view_coefficients(t_mid)[0])
        times, self.step_starts, self.stages, self.noise = [], {}, [], []
        for i, (down, ratio, up) in enumerate(targets):
            self.step_starts[len(times)] = i
            times.append(self.grid[i])
            e, r = s[i + 1] * ratio, ve_mid[i] / ve[i]
            if down > 0:  # midpoint rule: Euler to σ̃_m, then from σ̃_i to σ̃_T with d_m
                times.append(float(t_mid[i]))
                h, sm = down - ve[i], s_mid[i]
                self.stages.append(
                    ((sm * r / s[i], sm * (1 - r)), (e / s[i], e * h / (ve_mid[i] * sm), -e * h / ve_mid[i]))
                )
            else:  # Euler to σ̃_T = 0: x_T = s_{i+1} D_i
                self.stages.append(((0.0, e), None))
            self.noise.append(s[i + 1] * up * self.opts.get("s_noise", 1.0))
        return torch.tensor(times, dtype=torch.float64)

    def loop(self, x, start=0):
        for i in range(self.entry_step(start), len(self.stages)):
            (a, b), second = self.stages[i]
            x, denoised = yield x  # at σ̃_i
            if second is None:  # Euler to σ̃ = 0
                x = _affine(x, a, denoised, b)
                if self.noise[i] > 0:  # ancestral: back up to σ̃_{i+1} with fresh noise
                    x = x.add_(self.noise_like(x), alpha=self.noise[i])
            else:
                x_i = x
                x_mid, denoised_mid = yield lincomb(x_i, a, denoised, b)  # at the midpoint σ̃_m = √(σ̃_i σ̃_T)
                c_x, c_m, c_d = second
                if self.noise[i] > 0:  # ancestral: back up to σ̃_{i+1} with fresh noise
                    x = self.noised(x_i, self.noise[i], (x_i, c_x), (x_mid, c_m), (denoised_mid, c_d))
                else:
                    x = scaled(x_i, c_x).add_(x_mid, alpha=c_m).add_(denoised_mid, alpha=c_d)
        return x


class DPM2AncestralSampler(DPM2Sampler):
    name = "dpm_2_ancestral"
    aliases = ("kdpm2_ancestral",)
    description = (
        "DPM-2 ancestral (k-diffusion sample_dpm_2_ancestral, diffusers KDPM2Ancestral): DPM-2 to σ̃_down, "
        "then noise σ̃_up"
    )
    stochastic = True
    options = {
        "eta": Option(
            1.0,
            (float,),
            "ancestral η ≥ 0 (1: DDPM's posterior variance; 0: dpm_2); a pipeline's eta is not read",
            non_negative,
        ),
        "s_noise": Option(1.0, (float,), "noise inflation S_noise", positive),
        "view": view_option(),
    }

    def ancestral(self, level_from, level_to):
        """VE view: k-diffusion's get_ancestral_step (r = 1, ς = σ̃_up); flow view: the rectified-flow ancestral
        step (:func:`unisde.core.kernels.rf_ancestral_step`, ComfyUI's ``sample_dpm_2_ancestral_RF``)."""
        if self.view == "flow":
            return rf_ancestral_step(level_from, level_to, self.opts["eta"])
        down, up = ancestral_step(level_from, level_to, self.opts["eta"])
        return down, 1.0, up

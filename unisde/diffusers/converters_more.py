r"""Converters of the remaining Gaussian diffusers classes: CogVideoX's DDIM and DPM schedulers, Würstchen's DDPM,
UnCLIP's DDPM variant and the score-SDE VP scheduler. Each names the unisde sampler that reproduces the class and
refuses by name every flag it does not honour (:class:`unisde.diffusers.converters.Converter`); they register
through the same ``unisde_register_converters`` hook as the others.
"""

from __future__ import annotations

import torch

from unisde.diffusers.converters import (
    ANY,
    BETA_KEYS,
    PREDICTIONS,
    BetaTableConverter,
    ConversionError,
    Converter,
    RefusingByName,
)
from unisde.plugins import hookimpl, list_samplers


# ---------------------------------------------------------------------------------------------- CogVideoX
def cogvideox_alphas_cumprod(cfg: dict) -> torch.Tensor:
    r"""The ᾱ table of diffusers' CogVideoX schedulers (float64), built as they build it: the β table (its
    ``scaled_linear`` in float64, the others in float32 as :func:`unisde.core.schedule.diffusers_betas`), ᾱ =
    cumprod(1 − β) in that precision, the SNR shift ᾱ' = ᾱ / (k + (1 − k) ᾱ) with k = ``snr_shift_scale`` (i.e.
    SNR' = SNR / k: every noise level raised by √k in the VE view, Yang et al. 2024 [CogVideoX], §3.3), then
    ``rescale_betas_zero_snr`` applied to √ᾱ' (Lin et al. 2024, Algorithm 1 [ZTSNR]; diffusers' own function)."""
    from diffusers.schedulers.scheduling_ddim_cogvideox import rescale_zero_terminal_snr

    from unisde.core.schedule import diffusers_betas

    n = int(cfg["num_train_timesteps"])
    if cfg.get("trained_betas") is None and cfg["beta_schedule"] == "scaled_linear":
        start, end = float(cfg["beta_start"]), float(cfg["beta_end"])
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    else:
        betas = diffusers_betas({**cfg, "rescale_betas_zero_snr": False})
    abar = torch.cumprod(1.0 - betas, dim=0)
    k = float(cfg["snr_shift_scale"])
    abar = abar / (k + (1 - k) * abar)
    if cfg.get("rescale_betas_zero_snr"):
        abar = rescale_zero_terminal_snr(abar)
    return abar.to(torch.float64)


class _CogVideoXFamily(RefusingByName, BetaTableConverter):
    """CogVideoX's schedulers: the SNR-shifted table (:func:`cogvideox_alphas_cumprod`) as a unisde ``table``
    schedule, the leading/trailing spacings (``steps_offset``). Their steps apply neither ``clip_sample`` (on by
    default in their configs) nor thresholding, so the conversion sets both off, and they ignore a pipeline's ``eta``
    (pinned by the twin's options)."""

    accepts = {
        **BETA_KEYS,
        "beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2"),
        "prediction_type": PREDICTIONS,
        "timestep_spacing": ("leading", "trailing"),
        "steps_offset": ANY,
        "rescale_betas_zero_snr": ANY,
        "snr_shift_scale": ANY,
        "clip_sample": ANY,  # never applied by the class
        "clip_sample_range": ANY,
        "sample_max_value": ANY,
    }
    _REFUSALS = {
        "timestep_spacing": "with linspace spacing diffusers steps each timestep t to t − N//n, which is not the "
        "next timestep it visits, so the sample ends each step at another noise level than the one the model is "
        "next fed at (supported: 'leading', 'trailing')",
    }

    def schedule_keys(self, cfg):
        full = {**self.defaults(), **{k: v for k, v in cfg.items() if k in self.defaults()}}
        k = full["snr_shift_scale"]
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not k > 0:
            raise ConversionError(f"{self.name} flag snr_shift_scale={k!r} must be a number > 0")
        abar = cogvideox_alphas_cumprod(full)
        table = {"name": "table", "rho": (1.0 - abar).tolist(), "rho_complement": abar.tolist()}
        out = super().schedule_keys(cfg)
        out.update(schedule=table, clip_sample=False, thresholding=False)
        return out


class CogVideoXDDIMConverter(_CogVideoXFamily):
    """CogVideoXDDIMScheduler → ``ddim`` with η = 0 on the SNR-shifted table: its step is DDIM's deterministic
    x' = √((1 − ᾱ')/(1 − ᾱ)) x + (√ᾱ' − √ᾱ √((1 − ᾱ')/(1 − ᾱ))) x̂0 (Song et al. 2021, eq. 12 [DDIM]) whatever eta a
    pipeline passes; ``set_alpha_to_one`` sets its end (data, or index 0)."""

    name = "CogVideoXDDIMScheduler"
    sampler = "ddim"
    accepts = {**_CogVideoXFamily.accepts, "set_alpha_to_one": ANY}

    quirk_options = frozenset({"diffusers_prev_timestep"})

    def sampler_keys(self, cfg):  # t → t − N//n as DDIMScheduler's step (see DDIMConverter)
        return {"sampler": "ddim", "sampler_options": {"eta": 0.0, "diffusers_prev_timestep": True}}


class CogVideoXDPMConverter(_CogVideoXFamily):
    """CogVideoXDPMScheduler → ``dpmsolver++`` with ``algorithm_type="sde-dpmsolver++"``, midpoint 2M, on the
    SNR-shifted table: its step is SDE-DPM-Solver++(2M) (Lu et al. 2022b [DPMSolver++]) — first order on the first
    step and on the last (the step to the end, ``euler_at_final``), second order between, whatever the number of
    steps (no ``lower_order_final``). Its step draws the first-order step's noise also where it then replaces that
    step by the second-order one with a second draw (``discard_draw``), so seeded runs share the generator stream.
    It takes its own step signature (``old_pred_original_sample``, ``timestep_back``); the twin's ``step`` is the
    standard one, which CogVideoX pipelines call for every scheduler but this class. ``set_alpha_to_one=False``
    (the last step to index 0, which the spacing may already end on) is refused."""

    name = "CogVideoXDPMScheduler"
    sampler = "dpmsolver++"
    accepts = {**_CogVideoXFamily.accepts, "set_alpha_to_one": (True,)}
    _REFUSALS = {
        **_CogVideoXFamily._REFUSALS,
        "set_alpha_to_one": "the class then ends at index 0 with a first-order step that has zero length where the "
        "spacing already ends there; the dpmsolver++ twin ends on the data (supported: True)",
    }

    def sampler_keys(self, cfg):
        if "dpmsolver++" not in list_samplers():
            raise ConversionError(
                f"{self.name} converts to sampler 'dpmsolver++', which is not installed "
                "(pip install plugins/unisde-dpmsolver)"
            )
        options = {
            "algorithm_type": "sde-dpmsolver++",
            "solver_order": 2,
            "solver_type": "midpoint",
            "lower_order_final": False,
            "euler_at_final": True,
            "discard_draw": True,
            "exact_zero_snr": True,
        }
        return {"sampler": "dpmsolver++", "sampler_options": options}

    def closest_sampler(self):
        return "dpmsolver++" if "dpmsolver++" in list_samplers() else "ddim"


# ---------------------------------------------------------------------------------------------- Würstchen
class DDPMWuerstchenConverter(Converter):
    """DDPMWuerstchenScheduler (Würstchen, Stable Cascade) → ``ddpm`` (fixed_small) on the ``wuerstchen-cosine``
    schedule (:mod:`unisde.core.wuerstchen`: the clamped cosine ᾱ on the time warp of ``scaler``, offset ``s``), ε
    prediction, the model fed t ∈ [0, 1]. Its step is DDPM's ancestral posterior step (Ho et al. 2020, eqs. 6–7
    [DDPM]) from t to the next time of linspace(1, 0, n + 1) — the ``sgm_uniform`` grid — with noise on every step
    but the last, which ends at ᾱ(0) = 1 − 10⁻⁴ (its clamp), not on the data: ``final_sigmas_type="sigma_min"``.
    diffusers lists that end point t = 0 as a timestep too; its pipelines drop it (``timesteps[:-1]``), and the twin
    lists the n evaluation times only. Stable Cascade's pipelines test ``isinstance(scheduler,
    DDPMWuerstchenScheduler)`` to feed the model t: with another class (the twin) they feed a β table's timestep
    ratio, so the twin serves the step API, not those pipelines."""

    name = "DDPMWuerstchenScheduler"
    sampler = "ddpm"
    accepts = {"scaler": ANY, "s": ANY}

    def schedule_keys(self, cfg):
        full = {**self.defaults(), **{k: v for k, v in cfg.items() if k in ("scaler", "s")}}
        for key in ("scaler", "s"):
            value = full[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= (key == "s") * 0.0:
                raise ConversionError(f"{self.name} flag {key}={value!r} must be a number (scaler > 0, s >= 0)")
        if not float(full["scaler"]) > 0:
            raise ConversionError(f"{self.name} flag scaler={full['scaler']!r} must be > 0")
        return {
            "schedule": {"name": "wuerstchen-cosine", "scaler": float(full["scaler"]), "s": float(full["s"])},
            "prediction_type": "epsilon",
            "time_grid": "sgm_uniform",
            "time_grid_options": {"t_min": 0.0, "t_max": 1.0},
            "final_sigmas_type": "sigma_min",
            "clip_sample": False,
            "thresholding": False,
        }

    def explicit_grid(self, cfg):
        return True  # the model was trained on t ∈ [0, 1]; the grid's end is the schedule's ᾱ(0)

    def sampler_keys(self, cfg):
        return {"sampler": "ddpm", "sampler_options": {"variance_type": "fixed_small"}}


# ---------------------------------------------------------------------------------------------- UnCLIP
class UnCLIPConverter(RefusingByName, BetaTableConverter):
    """UnCLIPScheduler (karlo's DDPM variant, Kandinsky's prior) → ``ddpm``: the cosine table, the timesteps
    round(k (N − 1)/(n − 1)) (diffusers' ``linspace`` spacing) and DDPM's posterior step between consecutive ones
    with ``variance_type`` fixed_small_log or learned_range (whose "β" is the step's 1 − ᾱ_t/ᾱ_{t'}, as the ddpm
    sampler's), x̂0 clipped to ``clip_sample_range`` (``clip_sample``), no noise on the step from index 0. Its
    pipelines pass ``prev_timestep`` = the next timestep (None at the last, which then ends on the data), the step
    the twin takes; called without it diffusers steps t → t − 1 whatever the grid, which only a pipeline-less loop
    does.

    A quirk the twin keeps (``diffusers_last_x0_weight``, a quirk option: ``sampler="ddpm"`` with other options steps
    exactly): its last step, index 0 → data, weighs x̂0 by √1 · β_0/(1 − ᾱ_0) with β_0 and ᾱ_0 from its float32
    table. That is 1 in exact arithmetic, but the table stores ᾱ_0 = 1 − β_0 rounded to float32, so with the cosine
    table's β_0 = 4.1e-5 the weight is 1 − 5.3e-4 (N = 1000), in any arithmetic precision; the converter computes it
    as the class does (:func:`unclip_last_x0_weight`). Not reproduced: the class's float32 α = 1 − β of a step with
    β = 1 − ᾱ_t/ᾱ_{t'} rounds ᾱ_t/ᾱ_{t'} ≈ 5e-8 (the first step, from ᾱ_999 = 2.4e-9) to a multiple of 6e-8, an
    error of its float32 step arithmetic (absent when it runs on float64 tables) that moves √α, the sample's weight,
    by 2e-5 and the state by 2e-5 of the scale where clipping bounds x̂0. Nor, on other steps t → t − 1 (its
    timesteps have gaps of 1 where (N − 1)/(n − 1) < 2, n > 500 for N = 1000; its pipelines take 7 to 25 steps), its
    use of the table's β_t there as well: 9e-6 × scale at n = 600, 5e-5 at n = N, float32 or float64."""

    name = "UnCLIPScheduler"
    sampler = "ddpm"
    accepts = {
        "num_train_timesteps": ANY,
        "variance_type": ("fixed_small_log", "learned_range"),
        "clip_sample": ANY,
        "clip_sample_range": ANY,
        "prediction_type": ("epsilon", "sample"),
        "beta_schedule": ("squaredcos_cap_v2",),
    }
    _REFUSALS = {
        "prediction_type": "the class converts only ε and x0 outputs (diffusers raises for others)",
        "beta_schedule": "the class builds only the squaredcos_cap_v2 table (diffusers raises for others)",
    }
    quirk_options = frozenset({"diffusers_last_x0_weight"})

    def schedule_keys(self, cfg):
        return {"beta_schedule": "squaredcos_cap_v2", "time_grid": "linspace"}

    def sampler_keys(self, cfg):
        options = {
            "variance_type": cfg.get("variance_type", "fixed_small_log"),
            "diffusers_last_x0_weight": unclip_last_x0_weight(cfg),
        }
        return {"sampler": "ddpm", "sampler_options": options}

    def closest_sampler(self):
        return "ddpm"


def unclip_last_x0_weight(cfg: dict) -> float:
    r"""The x̂0 weight of UnCLIPScheduler's step from index 0 into the data, computed as its ``step`` computes it:
    √ᾱ_{−1} β_0/(1 − ᾱ_0) with ᾱ_{−1} = 1 and β_0, ᾱ_0 = 1 − β_0 from its float32 table (Ho et al. 2020, eq. 7
    [DDPM], whose exact value is 1), in float32 arithmetic. A Python float holding that float32 value."""
    from unisde.core.schedule import diffusers_betas

    n = cfg.get("num_train_timesteps", 1000)
    betas = diffusers_betas({"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": n})
    alpha_prod_0 = torch.cumprod(1.0 - betas, dim=0)[0]
    return float((torch.tensor(1.0) ** 0.5 * betas[0]) / (1 - alpha_prod_0))


# ---------------------------------------------------------------------------------------------- score-SDE VP
class ScoreSdeVpConverter(Converter):
    """ScoreSdeVpScheduler (Song et al. 2021 [SDE]: the VP-SDE with β(t) = β_min + t (β_max − β_min), eq. 11) →
    ``sde`` (η = 1, Euler–Maruyama, ``fixed_dt``) on the ``vp-linear`` schedule fed t itself, the model output read
    as ε (its ``step_pred`` turns it into the score −ε/σ(t)). Its evaluation times are linspace(1, ε, n)
    (``uniform_t`` from 1 to ``sampling_eps``) while every step takes dt = −1/n (not the grid's spacing), and the
    last step is an ordinary noisy one: ``fixed_dt`` reproduces both. diffusers' ``step_pred(score, x, t,
    generator)`` returns (x, x_mean); the twin's ``step(model_output, t, x, generator=...)`` returns x as
    ``prev_sample`` (x_mean, x without the step's noise, is not returned). The class has no pipeline."""

    name = "ScoreSdeVpScheduler"
    sampler = "sde"
    accepts = {"num_train_timesteps": ANY, "beta_min": ANY, "beta_max": ANY, "sampling_eps": ANY}

    def schedule_keys(self, cfg):
        full = {**self.defaults(), **{k: v for k, v in cfg.items() if k in self.accepts}}
        eps = full["sampling_eps"]
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ConversionError(f"{self.name} flag sampling_eps={eps!r} must lie in (0, 1)")
        schedule = {
            "name": "vp-linear",
            "beta_min": float(full["beta_min"]),
            "beta_max": float(full["beta_max"]),
            "timestep_convention": "t",
            "timestep_scale": 1.0,
            "num_train_timesteps": int(full["num_train_timesteps"]),
        }
        return {
            "schedule": schedule,
            "prediction_type": "epsilon",
            "time_grid": "uniform_t",
            "t_min": float(eps),
            "t_max": 1.0,
        }

    def explicit_grid(self, cfg):
        return True

    def sampler_keys(self, cfg):
        options = {"eta": 1.0, "method": "euler_maruyama", "fixed_dt": True}
        return {"sampler": "sde", "sampler_options": options}


MORE_CONVERTERS = (
    CogVideoXDDIMConverter,
    CogVideoXDPMConverter,
    DDPMWuerstchenConverter,
    UnCLIPConverter,
    ScoreSdeVpConverter,
)


@hookimpl
def unisde_register_converters(register):
    for converter in MORE_CONVERTERS:
        register(converter)

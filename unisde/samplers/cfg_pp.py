r"""The CFG++ samplers (Chung et al. 2024 [CFGpp]; ComfyUI's ``*_cfg_pp`` menu [ComfyUI]): ``ddim_cfg_pp``,
``euler_cfg_pp``, ``euler_ancestral_cfg_pp``, ``dpmpp_2s_ancestral_cfg_pp``, ``res_multistep_cfg_pp``,
``res_multistep_ancestral_cfg_pp``, ``gradient_estimation_cfg_pp`` (and ``dpmpp_2m_cfg_pp`` in the unisde-dpmsolver
plugin, beside its base), for any schedule.

With classifier-free guidance the model gives a guided x̂0 D = U + w (C − U) from the conditional and unconditional
estimates C and U. Plain samplers step on D alone; the paper's DDIM step (its CFG++ algorithm) keeps D for the data
direction but renoises with the *unconditional* noise estimate ε̂_∅ = ε̂_U = (x − s U)/σ:

    DDIM + CFG:    x_{i+1} = s_{i+1} D + σ_{i+1} ε̂_D,
    DDIM + CFG++:  x_{i+1} = s_{i+1} D + σ_{i+1} ε̂_U,        i.e.  x̃_{i+1} = D + σ̃_{i+1} (x̃_i − U)/σ̃_i

in the VE view x̃ = x/s, σ̃ = σ/s (the paper's guidance scale λ ∈ [0, 1] is D's w; any w is accepted here). CFG++ is
therefore not a discretisation of one ODE: D − U enters every step in full, so the guidance grows with the number of
steps; with U = D (w = 1) each sampler is its base sampler.

Each sampler is its base sampler's loop with one substitution (``needs_uncond = True`` makes the loop read U through
:meth:`unisde.samplers.base.Sampler.unconditional`): the base update runs on U (its multistep history holds U, and
``dpmpp_2s_ancestral`` evaluates its intermediate stage for U only), then c_i (D_i − U_i) is added. In the VE view
(ComfyUI's own variables on every model but flow models, where x is x̃; unisde's x = s x̃):

- ``ddim_cfg_pp`` / ``euler_cfg_pp`` / ``euler_ancestral_cfg_pp`` (ComfyUI ``sample_euler[_ancestral]_cfg_pp``):
  DDIM's loop with ε̂ from U (:meth:`unisde.samplers.ddim.DDIMSampler.renoise_denoised`), i.e. c = s_{i+1}:
  x̃_{i+1} = D + σ̃_down (x̃_i − U)/σ̃_i + S_noise σ̃_up z (σ̃_down = σ̃_{i+1}, σ̃_up = 0 at η = 0; ``euler_cfg_pp`` fixes
  η = 0, ``euler_ancestral_cfg_pp`` defaults to η = 1). ComfyUI scales by α = s on flow models too, so this is its
  update on every schedule.
- ``dpmpp_2s_ancestral_cfg_pp``: x̃_m = (σ̃_m/σ̃_i) x̃_i + (1 − σ̃_m/σ̃_i) U_i, U_m the unconditional x̂0 at x̃_m,
  x̃_{i+1} = (σ̃_down/σ̃_i) x̃_i + (1 − σ̃_down/σ̃_i) U_m + S_noise σ̃_up z + (D_i − U_i): c = s_{i+1}.
- ``gradient_estimation_cfg_pp``: d_i = (x̃_i − U_i)/σ̃_i,
  x̃_{i+1} = D_i + σ̃_{i+1} d_i + (γ − 1)(σ̃_{i+1} − σ̃_i)(d_i − d_{i−1}) (no correction on the first step): c = s_{i+1};
  with γ = 1 it is ``euler_cfg_pp`` on every schedule.
- ``res_multistep[_ancestral]_cfg_pp``: a first-order step (the first of a loop, or one to σ̃_down = 0) is
  x̃_{i+1} = D_i + σ̃_down (x̃_i − U_i)/σ̃_i (+ noise), c = s_{i+1}; a second-order step adds D_i − U_i to x̃_i *before*
  the exponential step,
  x̃_{i+1} = e^{−h}(x̃_i + D_i − U_i) + (1 − e^{−h}) U_i + (h/h_{i−1}) b(h)(U_i − U_{i−1}) (+ noise), so there
  c = s_{i+1} e^{−h} = (σ_T/σ_i) s_i: ComfyUI's update, whose guidance is damped by e^{−h} = σ̃_down/σ̃_i on its
  second-order steps and not on its first-order ones (reproduced because the name promises ComfyUI's sampler).
- ``dpmpp_2m_cfg_pp`` (plugin): x̃_{i+1} = D_i + e^{−h}(x̃_i − U_i) + (1 − e^{−h})/(2r) (D_i − U_{i−1}): DPM-Solver++(2M)
  with D_i in the current slot, U in the history and ε̂ from U; c = s_{i+1} + s_{i+1}(1 − e^{−h})/(2r).

Differences from ComfyUI, all on flow models only (elsewhere the updates agree to rounding,
tests/test_samplers_cfg_pp.py): ComfyUI's dpmpp_2m, res_multistep and gradient_estimation CFG++ apply the VE
formulas above to the flow sample itself (weight 1 = s + σ on D − U); unisde weighs D − U by the data coefficient s
on every schedule, as ComfyUI's euler CFG++ does (and its res_multistep / dpmpp_2m bases step in log σ̃ there, see
their docstrings); ComfyUI's dpmpp_2s_ancestral_cfg_pp takes its RF ancestral step there, unisde's base the VE split.
ComfyUI's gradient_estimation_cfg_pp returns D on a step to σ̃ = 0; unisde's takes the base's ordinary step there,
so that with U = D it is ``gradient_estimation``.

Only :func:`unisde.sample` drives these samplers: its ``denoiser(x, t)`` returns the pair (D, U), or its ``model``
the pair of raw outputs (guided, unconditional). :class:`unisde.UnifiedScheduler` refuses them (diffusers pipelines
combine the guidance themselves and pass only the guided output to ``step()``), and ``unisde.list_samplers()`` leaves
them out (``unisde.plugins.list_guided_samplers()`` lists them).
"""

from __future__ import annotations

from unisde.samplers.base import Option
from unisde.samplers.ddim import DDIMSampler
from unisde.samplers.dpmpp_sde import DPMPP2SAncestralSampler
from unisde.samplers.gradient_estimation import GradientEstimationSampler
from unisde.samplers.menu import preset
from unisde.samplers.res_multistep import ResMultistepSampler


class DDIMCFGPPSampler(DDIMSampler):
    r"""``ddim_cfg_pp``: DDIM with CFG++ (Chung et al. 2024, its DDIM algorithm [CFGpp]),
    x' = s' D + √(σ'² − std²) ε̂_U + std z: the ``ddim`` loop with ε̂ from the unconditional x̂0 (module docstring)."""

    name = "ddim_cfg_pp"
    needs_uncond = True
    default_grid = "karras"
    description = "DDIM with CFG++ (Chung et al. 2024): data term from the guided x̂0, ε̂ from the unconditional one"
    options = {key: DDIMSampler.options[key] for key in ("eta", "ancestral", "s_noise")}

    @classmethod
    def validate_options(cls, options: dict) -> dict:
        """The user's options plus DDIM's settings that have no meaning here: ε̂ comes from U (never from a clipped
        x̂0), and the step targets are the grid's own times."""
        fixed = {"use_clipped_model_output": False, "diffusers_prev_timestep": False}
        return {**super().validate_options(options), **fixed}

    def prepare(self, grid):
        times = super().prepare(grid)
        self.affine_steps = None  # x' = c_x x + c_D D holds only for U = D: every driver must run the loop
        return times

    def renoise_denoised(self, denoised):
        return self.unconditional(denoised)


EulerCFGPPSampler = preset(
    DDIMCFGPPSampler,
    "euler_cfg_pp",
    "ComfyUI sample_euler_cfg_pp: x̃' = D + σ̃' (x̃ − U)/σ̃ (Euler with ε̂ from the unconditional x̂0)",
    fixed={"eta": 0.0, "ancestral": "ddim", "s_noise": 1.0},
)
EulerAncestralCFGPPSampler = preset(
    DDIMCFGPPSampler,
    "euler_ancestral_cfg_pp",
    "ComfyUI sample_euler_ancestral_cfg_pp: Euler CFG++ to σ̃_down, fresh noise σ̃_up (η = 1 by default)",
    defaults={"eta": 1.0},
)


class DPMPP2SAncestralCFGPPSampler(DPMPP2SAncestralSampler):
    """``dpmpp_2s_ancestral_cfg_pp``: the ``dpmpp_2s_ancestral`` loop on U plus s_{i+1} (D_i − U_i) (module
    docstring)."""

    name = "dpmpp_2s_ancestral_cfg_pp"
    needs_uncond = True
    description = (
        "ComfyUI sample_dpmpp_2s_ancestral_cfg_pp: DPM-Solver++(2S) ancestral on the unconditional x̂0, plus the "
        "guidance D − U"
    )


class ResMultistepCFGPPSampler(ResMultistepSampler):
    """``res_multistep_cfg_pp``: the ``res_multistep`` loop on U plus c (D_i − U_i) with ComfyUI's weights (module
    docstring)."""

    name = "res_multistep_cfg_pp"
    needs_uncond = True
    description = (
        "ComfyUI sample_res_multistep_cfg_pp: RES 2nd-order multistep on the unconditional x̂0, plus the guidance "
        "D − U; eta > 0 adds ancestral noise"
    )


ResMultistepAncestralCFGPPSampler = preset(
    ResMultistepCFGPPSampler,
    "res_multistep_ancestral_cfg_pp",
    "ComfyUI sample_res_multistep_ancestral_cfg_pp: res_multistep_cfg_pp with ancestral noise (η = 1 by default)",
    defaults={"eta": 1.0},
)


class GradientEstimationCFGPPSampler(GradientEstimationSampler):
    """``gradient_estimation_cfg_pp``: the ``gradient_estimation`` loop with d from U plus s_{i+1} (D_i − U_i) (module
    docstring)."""

    name = "gradient_estimation_cfg_pp"
    needs_uncond = True
    description = (
        "ComfyUI sample_gradient_estimation_cfg_pp: gradient estimation with d = (x̃ − U)/σ̃, data term from the "
        "guided x̂0"
    )
    options = {
        "ge_gamma": Option(2.0, (float,), "γ of d̄ = γ d_i + (1 − γ) d_{i−1} (2: the paper's; 1: euler_cfg_pp)"),
        "view": GradientEstimationSampler.options["view"],
    }


CFG_PP_SAMPLERS = (
    DDIMCFGPPSampler,
    EulerCFGPPSampler,
    EulerAncestralCFGPPSampler,
    DPMPP2SAncestralCFGPPSampler,
    ResMultistepCFGPPSampler,
    ResMultistepAncestralCFGPPSampler,
    GradientEstimationCFGPPSampler,
)

r"""dpm_2, dpm_2_ancestral, ipndm, ipndm_v and deis: live per-step parity with diffusers' KDPM2, KDPM2Ancestral and
DEISMultistep schedulers, the reference algorithms (k-diffusion's and ComfyUI's loops) in float64, convergence
orders on the exact Gaussian probability-flow ODE, and the data law of the ancestral sampler.

Parity: both loops run from the same start, with the same model F(x, τ) = x (0.8 + 1e-4 τ) + 0.05 sin 3x (τ the
timestep each scheduler feeds) and the same generator seed; after *every* model call the states are compared
(diffusers' KDPM2 lives in the VE view x̃ = x/s, unisde in the model's space: its state is divided by s at the
time it has reached). Tolerance 1e-5 × max |x| over the reference trajectory, in float32.

k-diffusion's ``sample_dpm_2`` and ``sample_dpm_2_ancestral`` are called themselves in
``tests/test_kdiffusion_reference.py``. ComfyUI (``sample_ipndm``, ``sample_ipndm_v``) is not installable, so its
loops are written out below as reference algorithms.

Ground truth: data N(μ, v0 I) with the exact denoiser D(x, t) = μ + s v0/(s² v0 + σ²)(x − s μ); the PF-ODE then has
the closed-form flow x̃(σ̃) = μ + (x̃(σ̃_0) − μ) √((v0 + σ̃²)/(v0 + σ̃_0²)) in the VE view.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from diffusers import DEISMultistepScheduler, IPNDMScheduler, KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler
from law_checks import exact_moments as law_exact_moments

import unisde
from unisde import NoiseSchedule, get_sampler
from unisde.analytic import Gaussian
from unisde.diffusers.converters import ConversionError
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import append_final, grid_from_sigmas, make_grid
from unisde.sampling import run_loop

SHAPE = (1, 2, 4, 4)
REL_TOL = 1e-5
MU, V0 = 0.5, 0.25
NEW = ("dpm_2", "dpm_2_ancestral", "ipndm", "ipndm_v", "deis")


def fake_model(x: torch.Tensor, timestep) -> torch.Tensor:
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x)


def start_noise(seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def lockstep(
    ref, uni, n: int, x_start: torch.Tensor, *, ve_view: bool, seed: int = 1, begin: int = 0, model=fake_model
) -> tuple[float, float]:
    """Run the diffusers pipeline loop on both schedulers side by side (from evaluation ``begin``, as img2img
    pipelines enter with ``set_begin_index``) and return (max state difference over all calls, reference scale).
    ``x_start`` is the reference's start; with ``ve_view`` unisde starts from s(t) · x_start."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert len(uni.timesteps) == len(ref.timesteps), (uni.timesteps, ref.timesteps)
    if begin:
        ref.set_begin_index(begin)
        uni.set_begin_index(begin)
    sched = uni.noise_schedule
    s_after = [float(sched.s(t)) for t in uni._eval_times[1:]] + [1.0]  # the state after call j lives at eval j + 1
    s_start = float(sched.s(uni._eval_times[begin])) if ve_view else 1.0
    gen_ref, gen_uni = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    kw_ref = {"generator": gen_ref} if "generator" in inspect.signature(ref.step).parameters else {}
    x_ref, x_uni = x_start.clone(), x_start * s_start
    scale, worst = float(x_ref.abs().max()), 0.0
    for j in range(begin, len(ref.timesteps)):
        t_ref, t_uni = ref.timesteps[j], uni.timesteps[j]
        x_ref = ref.step(model(ref.scale_model_input(x_ref, t_ref), t_ref), t_ref, x_ref, **kw_ref).prev_sample
        x_uni = uni.step(model(uni.scale_model_input(x_uni, t_uni), t_uni), t_uni, x_uni, generator=gen_uni).prev_sample
        seen = x_uni / s_after[j] if ve_view and s_after[j] != 1.0 else x_uni
        scale = max(scale, float(x_ref.abs().max()))
        worst = max(worst, float((seen - x_ref).abs().max()))
    assert torch.isfinite(x_ref).all()
    return worst, scale


# ============================================================================ conversions
@pytest.mark.parametrize(
    "cls, sampler",
    [
        (KDPM2DiscreteScheduler, "dpm_2"),
        (KDPM2AncestralDiscreteScheduler, "dpm_2_ancestral"),
        (DEISMultistepScheduler, "deis"),
    ],
)
def test_from_config_picks_the_twin(cls, sampler):
    ref = cls()  # alive: a live config is traced to its owner (KDPM2, KDPM2Ancestral and LMS share their keys)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == sampler and sampler in unisde.list_samplers()
    assert uni.order == cls.order
    assert UnifiedScheduler.from_config(cls()).config.sampler == sampler  # the scheduler object itself


def _convert(cls, **kwargs):
    return UnifiedScheduler.from_config({**cls(**kwargs).config, "_class_name": cls.__name__})


def test_conversion_keys():
    kdpm2 = _convert(KDPM2DiscreteScheduler)
    assert kdpm2.config.time_grid == "linspace_fractional" and kdpm2.config.init_noise == "sigma"
    leading = _convert(KDPM2DiscreteScheduler, timestep_spacing="leading")
    assert leading.config.time_grid == "leading" and leading.config.init_noise == "marginal"
    assert _convert(KDPM2DiscreteScheduler, use_karras_sigmas=True).config.time_grid == "karras"
    deis = _convert(DEISMultistepScheduler, solver_order=3, lower_order_final=False)
    assert deis.config.final_sigmas_type == "sigma_min" and deis.config.time_grid == "linspace_multistep"
    assert deis._sampler.opts == {"solver_order": 3, "lower_order_final": False}
    # another sampler on a KDPM2 model: schedule and grid from the config, the algorithm replaced
    other = UnifiedScheduler.from_config(
        {**KDPM2DiscreteScheduler().config, "_class_name": "KDPM2DiscreteScheduler"}, sampler="deis"
    )
    assert other.config.sampler == "deis"


@pytest.mark.parametrize(
    "cls, kwargs, match",
    [
        (DEISMultistepScheduler, {"use_karras_sigmas": True}, "zero-length step"),
        (DEISMultistepScheduler, {"use_exponential_sigmas": True}, "zero-length step"),
        (DEISMultistepScheduler, {"use_beta_sigmas": True}, "zero-length step"),
        (DEISMultistepScheduler, {"use_flow_sigmas": True}, "use_flow_sigmas"),
        (DEISMultistepScheduler, {"prediction_type": "flow_prediction"}, "prediction_type"),
    ],
    ids=["deis-karras", "deis-exponential", "deis-beta", "deis-flow", "deis-flow-prediction"],
)
def test_unreproduced_flags_are_refused(cls, kwargs, match):
    config = {**cls().config, **kwargs, "_class_name": cls.__name__}
    with pytest.raises(ConversionError, match=match):
        UnifiedScheduler.from_config(config)


def test_ipndm_scheduler_is_refused_with_the_reason():
    for kwargs in ({}, {"sampler": "ipndm"}):
        with pytest.raises(ConversionError, match="crash.*discards the model output"):
            UnifiedScheduler.from_config(IPNDMScheduler().config, **kwargs)


# ============================================================================ live parity: KDPM2
KDPM2_CONFIGS = [
    {},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing", "prediction_type": "v_prediction", "beta_schedule": "scaled_linear"},
    {"beta_schedule": "squaredcos_cap_v2", "timestep_spacing": "trailing"},
    {"use_karras_sigmas": True, "beta_schedule": "scaled_linear"},
    {"use_exponential_sigmas": True, "prediction_type": "v_prediction"},
]
KDPM2_IDS = ["eps-linspace", "leading", "v-trailing-scaled", "cosine-trailing", "karras", "exponential"]


@pytest.mark.parametrize("cls", [KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler])
@pytest.mark.parametrize("config", KDPM2_CONFIGS, ids=KDPM2_IDS)
@pytest.mark.parametrize("n", [5, 12])
def test_kdpm2_per_step_parity(cls, config, n):
    """Every state of diffusers' KDPM2 / KDPM2Ancestral loop (interleaved timesteps: grid point, midpoint at
    √(σ̃_i σ̃_{i+1}), …; VE view; the ancestral noise drawn from the same generator) is reproduced by the converted
    UnifiedScheduler. Timesteps agree to float32 rounding of fractional indices, except on Karras grids, where
    diffusers rounds the grid points' timesteps (not the midpoints') and unisde feeds the exact index (|Δ| < 0.5)."""
    if cls is KDPM2AncestralDiscreteScheduler and config.get("beta_schedule") == "squaredcos_cap_v2":
        pytest.skip(
            "diffusers' float32 KDPM2Ancestral returns NaN on this table: σ_down = (σ_next² − σ_up²)^½ cancels "
            "at σ̃_max/σ̃_next ≈ 7·10³ (unisde computes σ̃_down without the subtraction; see the next test)"
        )
    ref = cls(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert len(uni.timesteps) == len(ref.timesteps) == 2 * n - 1
    torch.testing.assert_close(uni.sigmas[[0, -1]].double(), ref.sigmas[[0, -1]].double(), rtol=1e-5, atol=0)
    karras = bool(config.get("use_karras_sigmas"))
    torch.testing.assert_close(uni.timesteps.double(), ref.timesteps.double(), rtol=0, atol=0.5 if karras else 5e-3)
    # on Karras grids the timesteps differ by design (above): compare the algorithms with a model that ignores τ
    model = (lambda x, t: x * 0.8 + 0.05 * torch.sin(3 * x)) if karras else fake_model
    worst, scale = lockstep(ref, uni, n, start_noise() * ref.init_noise_sigma, ve_view=True, seed=3, model=model)
    assert worst <= REL_TOL * scale, f"{cls.__name__} {config} n={n}: max|diff| {worst:.3g} > 1e-5 × {scale:.3g}"


def test_kdpm2_ancestral_stays_finite_where_diffusers_does_not():
    """The cosine table's first step (σ̃ ≈ 2·10⁴ → 3.1): diffusers' float32 σ_down is NaN, unisde's is σ̃_next²/σ̃."""
    ref = KDPM2AncestralDiscreteScheduler(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing")
    ref.set_timesteps(5)
    assert torch.isnan(ref.timesteps).any()
    uni = UnifiedScheduler.from_config(ref.config)
    uni.set_timesteps(5)
    x, gen = start_noise() * uni.init_noise_sigma, torch.Generator().manual_seed(0)
    for t in uni.timesteps:
        x = uni.step(fake_model(x, t), t, x, generator=gen).prev_sample
    assert torch.isfinite(uni.timesteps).all() and torch.isfinite(x).all()


@pytest.mark.parametrize("cls", [KDPM2DiscreteScheduler, KDPM2AncestralDiscreteScheduler])
def test_kdpm2_img2img_entry_matches_diffusers(cls):
    """An img2img pipeline enters at timesteps[t_start · order] with set_begin_index: the same states follow."""
    ref = cls(timestep_spacing="leading", steps_offset=1)
    uni = UnifiedScheduler.from_config(ref.config)
    worst, scale = lockstep(ref, uni, 10, start_noise() * 3.0, ve_view=True, seed=5, begin=2 * 4)
    assert worst <= REL_TOL * scale


def test_kdpm2_ancestral_noise_follows_the_generator():
    """Different generator seeds give different samples, equal seeds equal ones (one draw per two-stage step)."""
    uni = _convert(KDPM2AncestralDiscreteScheduler)

    def run(seed):
        uni.set_timesteps(6)
        x, gen = start_noise() * uni.init_noise_sigma, torch.Generator().manual_seed(seed)
        for t in uni.timesteps:
            x = uni.step(fake_model(x, t), t, x, generator=gen).prev_sample
        return x

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


# ============================================================================ live parity: DEIS
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
@pytest.mark.parametrize("n", [6, 12])
def test_deis_per_step_parity(order, prediction_type, spacing, n):
    """diffusers' DEISMultistepScheduler (log ρ multistep, lower_order_final, last step to the table's σ_min) and the
    converted UnifiedScheduler: same integer timesteps, same state after every step (model space, float32)."""
    ref = DEISMultistepScheduler(
        solver_order=order,
        prediction_type=prediction_type,
        timestep_spacing=spacing,
        steps_offset=1 if spacing == "leading" else 0,
    )
    uni = UnifiedScheduler.from_config(ref.config)
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert torch.equal(uni.timesteps, ref.timesteps)
    worst, scale = lockstep(ref, uni, n, start_noise(), ve_view=False)
    what = f"DEIS order {order} {prediction_type} {spacing} n={n}"
    assert worst <= REL_TOL * scale, f"{what}: {worst:.3g} > 1e-5 × {scale:.3g}"


@pytest.mark.parametrize(
    "config",
    [
        {"solver_order": 3, "lower_order_final": False},
        {
            "solver_order": 2,
            "lower_order_final": False,
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
        },
        {"solver_order": 2, "thresholding": True, "prediction_type": "sample", "sample_max_value": 1.5},
        {"algorithm_type": "dpmsolver++", "solver_type": "midpoint"},  # diffusers maps these to deis / logrho
    ],
    ids=["no-lower-final", "scaled-linear", "thresholding", "mapped-algorithm"],
)
@pytest.mark.parametrize("n", [8, 16])
def test_deis_flag_parity(config, n):
    ref = DEISMultistepScheduler(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    worst, scale = lockstep(ref, uni, n, start_noise(1) * 1.5, ve_view=False)
    assert worst <= REL_TOL * scale, f"DEIS {config} n={n}: {worst:.3g} > 1e-5 × {scale:.3g}"


@pytest.mark.parametrize("order, n", [(2, 25), (3, 50), (3, 100)])
def test_deis_float64_parity_is_exact(order, n):
    """With diffusers' σ's recomputed in float64 (its float32 closed-form coefficients lose digits on fine grids)
    the two DEIS loops agree to 1e-11 in float64: the same algorithm, not a near one."""
    ref = DEISMultistepScheduler(solver_order=order)
    uni = UnifiedScheduler.from_config(ref.config)
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    ac = ref.alphas_cumprod.double()
    table = ((1 - ac) / ac).sqrt()
    x_ref = x_uni = start_noise(dtype=torch.float64)
    ref.sigmas = torch.cat([table[ref.timesteps], table[:1]])  # after set_timesteps: its own float64 σ's
    for t in ref.timesteps:
        x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
        x_uni = uni.step(fake_model(x_uni, t), t, x_uni).prev_sample
    assert float((x_ref - x_uni).abs().max()) <= 1e-11 * float(x_ref.abs().max())


@pytest.mark.parametrize(
    "config, n",
    [
        ({"solver_order": 3, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction"}, 8),
        ({"solver_order": 3, "prediction_type": "v_prediction"}, 20),
        ({"solver_order": 3}, 40),
        ({"solver_order": 2}, 60),
    ],
    ids=["cosine-v-8", "v-20", "eps-40", "order2-60"],
)
def test_deis_float32_is_closer_to_the_float64_run_than_diffusers(config, n):
    """Where float32 parity is not asserted: on fine grids diffusers' float32 log ρ coefficients (and on the cosine
    table its x/α at α ≈ 5·10⁻⁵) lose digits. Against the float64 run (the same algorithm, test above) unisde's
    float32 sample is the closer one."""

    def run(dtype, cast64):
        ref = DEISMultistepScheduler(**config)
        uni = UnifiedScheduler.from_config(ref.config)
        ref.set_timesteps(n)
        uni.set_timesteps(n)
        if cast64:
            ac = ref.alphas_cumprod.double()
            table = ((1 - ac) / ac).sqrt()
            ref.sigmas = torch.cat([table[ref.timesteps], table[:1]])
        x_ref = x_uni = (start_noise(1) * 1.5).to(dtype)
        for t in ref.timesteps:
            x_ref = ref.step(fake_model(x_ref, t), t, x_ref).prev_sample
            x_uni = uni.step(fake_model(x_uni, t), t, x_uni).prev_sample
        return x_ref.double(), x_uni.double()

    truth, _ = run(torch.float64, True)
    ref32, uni32 = run(torch.float32, False)
    err_ref, err_uni = float((ref32 - truth).abs().max()), float((uni32 - truth).abs().max())
    assert err_uni < err_ref and err_uni <= 1e-5 * float(truth.abs().max()), (err_uni, err_ref)


def test_deis_img2img_entry_matches_diffusers():
    ref = DEISMultistepScheduler(solver_order=3)
    uni = UnifiedScheduler.from_config(ref.config)
    worst, scale = lockstep(ref, uni, 12, start_noise(), ve_view=False, begin=5)
    assert worst <= REL_TOL * scale


# ============================================================================ reference algorithms, float64
# ComfyUI, comfy/k_diffusion/sampling.py (from zju-pi/diff-sampler): iPNDM and iPNDM_v at order ≤ 2 (see
# unisde.samplers.ipndm for why unisde's ipndm_v takes the exact variable-step weights at orders 3 and 4).
def comfyui_sample_ipndm(model, x, sigmas, max_order=4, variable=False):
    x_next, buffer_model = x, []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        x_cur = x_next
        denoised = model(x_cur, t_cur)
        d_cur = (x_cur - denoised) / t_cur
        order = min(max_order, i + 1)
        if t_next == 0:  # denoising step
            x_next = denoised
        elif order == 1:
            x_next = x_cur + (t_next - t_cur) * d_cur
        elif order == 2 and variable:
            h_n, h_n_1 = t_next - t_cur, t_cur - sigmas[i - 1]
            coeff1, coeff2 = (2 + (h_n / h_n_1)) / 2, -(h_n / h_n_1) / 2
            x_next = x_cur + (t_next - t_cur) * (coeff1 * d_cur + coeff2 * buffer_model[-1])
        elif order == 2:
            x_next = x_cur + (t_next - t_cur) * (3 * d_cur - buffer_model[-1]) / 2
        elif order == 3:
            x_next = x_cur + (t_next - t_cur) * (23 * d_cur - 16 * buffer_model[-1] + 5 * buffer_model[-2]) / 12
        elif order == 4:
            x_next = (
                x_cur
                + (t_next - t_cur)
                * (55 * d_cur - 59 * buffer_model[-1] + 37 * buffer_model[-2] - 9 * buffer_model[-3])
                / 24
            )
        if len(buffer_model) == max_order - 1:
            for k in range(max_order - 2):
                buffer_model[k] = buffer_model[k + 1]
            buffer_model[-1] = d_cur
        else:
            buffer_model.append(d_cur)
    return x_next


def ve_denoiser(x, sigma):
    """The exact Gaussian denoiser in the VE view, D(x̃; σ̃) = μ + v0/(v0 + σ̃²)(x̃ − μ)."""
    return MU + V0 / (V0 + float(sigma) ** 2) * (x - MU)


def karras_sigmas(smax, smin, n, rho=7.0):
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return torch.cat(
        [
            (smax ** (1 / rho) + ramp * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho,
            torch.zeros(1, dtype=torch.float64),
        ]
    )


REFERENCE_SCHEDULES = {
    "edm": lambda: NoiseSchedule.edm(),
    "vp-table": lambda: NoiseSchedule.from_diffusers_config({}),
    "vp-linear": lambda: NoiseSchedule.vp_linear(),
}


def run_unisde(name, sched, sigmas, x_ve, options=None, noise=None):
    """The unisde sampler on the grid of these VE-view σ's, in the model's space from s(t_0) x̃_0, exact denoiser."""
    dist = Gaussian(torch.full((x_ve.shape[1],), MU), torch.tensor(V0))
    smp = get_sampler(name)(sched, **(options or {}))
    grid = grid_from_sigmas(sched, sigmas)
    times = smp.prepare(grid)
    if noise is not None:
        smp.noise_sampler = lambda like: next(noise)
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in times]
    x0 = x_ve * float(sched.s(grid[0]))
    return run_loop(smp, x0, lambda x, k: dist.denoise(x, t_list[k], sched))


@pytest.mark.parametrize("kind", sorted(REFERENCE_SCHEDULES))
@pytest.mark.parametrize("name, max_order", [("ipndm", 4), ("ipndm", 3), ("ipndm", 2), ("ipndm_v", 2)])
def test_ipndm_is_comfyui_sample_ipndm(kind, name, max_order):
    """ComfyUI's loop returns x̂0 on a step to σ = 0: unisde's ``denoise_to_zero=True``."""
    sched = REFERENCE_SCHEDULES[kind]()
    sigmas = karras_sigmas(float(sched.ve_sigma(1.0)) * 0.9, float(sched.ve_sigma(1e-3)) * 1.5, 11)
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * float(sigmas[0])
    ref = comfyui_sample_ipndm(ve_denoiser, x, sigmas, max_order, variable=name == "ipndm_v")
    ours = run_unisde(name, sched, sigmas, x, {"max_order": max_order, "denoise_to_zero": True})
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


def test_ipndm_v_is_lms_and_ipndm_on_a_uniform_grid():
    """ipndm_v's weights are the exact variable-step Adams–Bashforth ones (= ``lms``); on a grid uniform in σ̃ they
    are the constant-step weights of ipndm."""
    sched = NoiseSchedule.from_diffusers_config({})
    x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 8.0
    graded = karras_sigmas(8.0, 0.05, 12)
    torch.testing.assert_close(
        run_unisde("ipndm_v", sched, graded, x), run_unisde("lms", sched, graded, x), rtol=1e-12, atol=1e-12
    )
    uniform = torch.linspace(8.0, 0.0, 13, dtype=torch.float64)  # equal steps, the last one to σ̃ = 0 included
    torch.testing.assert_close(
        run_unisde("ipndm_v", sched, uniform, x), run_unisde("ipndm", sched, uniform, x), rtol=1e-12, atol=1e-12
    )


# ============================================================================ convergence orders
ORDER_CASES = {
    "vp-table/karras": (lambda: NoiseSchedule.from_diffusers_config({}), "karras"),
    "edm/karras": (lambda: NoiseSchedule.edm(), "karras"),
    "vp-linear/uniform_lambda": (lambda: NoiseSchedule.vp_linear(), "uniform_lambda"),
}


def flow_error(name, sched, grid, options=None) -> float:
    """|x̃_end − exact flow| from x̃_0 = 1.3 with the exact Gaussian denoiser, float64. The grid ends at its last point
    σ̃_end > 0, where the flow is compared, not at clean data (``unisde.sample`` always ends there): a final
    Euler-to-zero step (dpm_2's) would add an error independent of n and mask the order."""
    dist = Gaussian(torch.full((1,), MU), torch.tensor(V0))
    t0, t_end = float(grid[0]), float(grid[-1])
    smp = get_sampler(name)(sched, **(options or {}))
    times = smp.prepare(grid)
    t_list = [torch.tensor(float(t), dtype=torch.float64) for t in times]
    start = torch.full((1, 1), 1.3 * float(sched.s(t0)), dtype=torch.float64)
    out = run_loop(smp, start, lambda x, k: dist.denoise(x, t_list[k], sched))
    ve0, ve_end = float(sched.ve_sigma(t0)), float(sched.ve_sigma(t_end))
    exact = MU + (1.3 - MU) * math.sqrt((V0 + ve_end**2) / (V0 + ve0**2))
    return abs(float(out) / float(sched.s(t_end)) - exact)


def graded_grid(sched, n, kind):
    """n steps of a grid whose n + 1 points are the grid ``kind``'s n + 1 evaluation times (the last is the end)."""
    g = make_grid(sched, n + 1, kind)
    return torch.cat([g[:-2], g[-2:-1]])


def measured_orders(name, options, case, ns=(16, 32, 64, 128)):
    make, kind = ORDER_CASES[case]
    sched = make()
    errs = [flow_error(name, sched, graded_grid(sched, n, kind), options) for n in ns]
    return errs, [math.log2(errs[i] / errs[i + 1]) for i in range(len(errs) - 1)]


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_dpm_2_is_second_order(case):
    errs, orders = measured_orders("dpm_2", {}, case)
    assert all(1.85 < p < 2.25 for p in orders), (errs, orders)


@pytest.mark.parametrize("case", ["vp-table/karras", "vp-linear/uniform_lambda"])
@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_deis_order_p_converges_at_order_p(case, order):
    """log ρ Adams–Bashforth of order p: measured ≈ p at 64 → 128 steps (lower_order_final only acts below 15
    steps). On EDM's grid from σ̃ = 80 the Euler/AB2 warm-up steps dominate order 4 at these step counts."""
    errs, orders = measured_orders("deis", {"solver_order": order}, case)
    assert order - 0.4 < orders[-1] < order + 1.2 and errs[-1] < errs[0], (errs, orders)


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
@pytest.mark.parametrize("order", [2, 3, 4])
def test_ipndm_v_converges_at_its_order(case, order):
    errs, orders = measured_orders("ipndm_v", {"max_order": order}, case)
    assert order - 0.5 < orders[-1] < order + 0.6, (errs, orders)


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_ipndm_is_second_order_on_graded_grids(case):
    """Constant-step weights on a Karras or λ-uniform grid: each weight is off by O(h), so iPNDM is second order
    there, whatever max_order (it is ipndm_v that keeps the order on such grids)."""
    errs, orders = measured_orders("ipndm", {}, case)
    assert all(1.8 < p < 2.4 for p in orders), (errs, orders)


@pytest.mark.parametrize("max_order", [3, 4])
def test_ipndm_reaches_its_order_on_a_uniform_sigma_grid(max_order):
    """On a grid uniform in σ̃ the constant-step weights are exact: order ≈ max_order (64 → 128 steps)."""
    sched = NoiseSchedule.vp_linear()
    errs = []
    for n in (32, 64, 128):
        sig = torch.linspace(5.0, 0.2, n + 1, dtype=torch.float64)
        grid = append_final(sched.t_from_sigma(sig[:-1]), float(sched.t_from_sigma(sig[-1:])), sched)
        errs.append(flow_error("ipndm", sched, grid, {"max_order": max_order}))
    measured = math.log2(errs[-2] / errs[-1])
    assert max_order - 0.3 < measured < max_order + 0.8, (errs, measured)


@pytest.mark.parametrize("name", ["dpm_2", "deis", "ipndm", "ipndm_v"])
def test_functional_api_lands_on_the_exact_flow(name):
    """unisde.sample with a denoiser, float64, ending on clean data: the PF-ODE's endpoint within 1e-2 at 40 steps
    (mostly the last step, from the table's σ̃_min = 0.03 to 0)."""
    sched = NoiseSchedule.from_diffusers_config({})
    dist = Gaussian(torch.full((2,), MU), torch.tensor(V0))
    noise = torch.tensor([[1.3, -0.4]], dtype=torch.float64)
    out = unisde.sample(
        None,
        noise,
        schedule=sched,
        sampler=name,
        num_inference_steps=40,
        time_grid="karras",
        denoiser=lambda x, t: dist.denoise(x, t, sched),
    )
    t0 = float(make_grid(sched, 40, "karras")[0])
    ve0, s0, sig0 = float(sched.ve_sigma(t0)), float(sched.s(t0)), float(sched.sigma(t0))
    x_ve = noise * math.sqrt(s0**2 + sig0**2) / s0
    exact = MU + (x_ve - MU) * math.sqrt(V0 / (V0 + ve0**2))
    assert float((out - exact).abs().max()) < 1e-2


# ============================================================================ dpm_2_ancestral: the data law
def exact_moments(sched, grid, options=None):
    """(mean, variance) of dpm_2_ancestral's 1-d output from the exact marginal at t_0, exactly
    (:func:`law_checks.exact_moments`)."""
    return law_exact_moments("dpm_2_ancestral", sched, grid, options, MU, V0)


@pytest.mark.parametrize("case", ["vp-table/karras", "edm/karras"])
def test_dpm_2_ancestral_lands_on_the_data_law_as_steps_grow(case):
    make, kind = ORDER_CASES[case]
    sched = make()
    errs = []
    for n in (8, 16, 32, 64):
        m, v = exact_moments(sched, make_grid(sched, n, kind))
        errs.append(max(abs(m - MU), abs(v - V0)))
    assert errs[-1] < 1e-2 and all(a > b for a, b in zip(errs, errs[1:])), errs
    assert errs[-2] / errs[-1] > 1.7, errs  # at least first order


def test_dpm_2_ancestral_samples_the_gaussian_through_the_scheduler():
    """Monte Carlo through the converted KDPM2Ancestral scheduler with real noise: 48k values, mean and variance
    within 4 standard errors (plus the exactly computed discretisation bias) of N(μ, v0)."""
    uni = _convert(KDPM2AncestralDiscreteScheduler, beta_schedule="scaled_linear")
    n = 30
    uni.set_timesteps(n)
    dist = Gaussian(torch.full((16,), MU), torch.tensor(V0), event_shape=(1, 4, 4))
    model = dist.as_model("epsilon", uni.noise_schedule)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 1, 4, 4, generator=gen, dtype=torch.float64) * uni.init_noise_sigma
    for t in uni.timesteps:
        x = uni.step(model(uni.scale_model_input(x, t), t), t, x, generator=gen).prev_sample
    values = x.flatten()
    grid = torch.cat([uni._eval_times[::2], torch.zeros(1, dtype=torch.float64)])
    m_exact, v_exact = exact_moments(uni.noise_schedule, grid)
    se_mean, se_var = math.sqrt(V0 / values.numel()), V0 * math.sqrt(2.0 / values.numel())
    assert abs(float(values.mean()) - MU) < 4 * se_mean + abs(m_exact - MU)
    assert abs(float(values.var()) - V0) < 4 * se_var + abs(v_exact - V0)


# ============================================================================ every schedule and parameterisation
@pytest.mark.parametrize(
    "schedule", [None, {"name": "ve", "sigma_min": 0.01, "sigma_max": 50.0}, "edm"], ids=["vp-table", "ve", "edm"]
)
@pytest.mark.parametrize("name", ["dpm_2", "deis", "ipndm", "ipndm_v"])
def test_deterministic_samplers_run_every_model_alike(name, schedule):
    """Through UnifiedScheduler (float64) with a perfect model of each parameterisation (ε, x0, v): the same output
    to 1e-6 whatever the parameterisation (the perfect models invert timesteps by bisection), and the PF-ODE's
    endpoint within the discretisation error of 30 steps
    (< 0.03; the last step to σ̃ = 0 dominates it), on a VP table, VE and EDM alike."""
    outputs = []
    for param in ("epsilon", "sample", "v_prediction"):
        uni = UnifiedScheduler(sampler=name, prediction_type=param, **({"schedule": schedule} if schedule else {}))
        uni.set_timesteps(30)
        sched = uni.noise_schedule
        model = Gaussian(torch.full((16,), MU), torch.tensor(V0), event_shape=(1, 4, 4)).as_model(param, sched)
        x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        x = x * uni.init_noise_sigma
        t0 = uni._eval_times[0]
        ve0, s0 = float(sched.ve_sigma(t0)), float(sched.s(t0))
        exact = MU + (x / s0 - MU) * math.sqrt(V0 / (V0 + ve0**2))
        for t in uni.timesteps:
            x = uni.step(model(uni.scale_model_input(x, t), t), t, x).prev_sample
        assert float((x - exact).abs().max()) < 0.03, (param, float((x - exact).abs().max()))
        outputs.append(x)
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NEW)
def test_sampler_options_are_validated(name):
    smp = get_sampler(name)
    with pytest.raises(ValueError, match="unknown option"):
        smp(NoiseSchedule.vp_linear(), nope=1)
    bad = {
        "deis": {"solver_order": 5},
        "ipndm": {"max_order": 0},
        "ipndm_v": {"max_order": 5},
        "dpm_2_ancestral": {"eta": -1.0},
    }.get(name)
    if bad:
        with pytest.raises(ValueError, match=next(iter(bad))):
            smp(NoiseSchedule.vp_linear(), **bad)

r"""``pndm`` with diffusers' pseudo Runge–Kutta warm-up (``prk_warmup=True``; PNDMScheduler with
``skip_prk_steps=False``, its default): live parity with diffusers, per step.

diffusers' PNDM takes its first three steps as four-call RK4 steps in the DDIM transfer φ (calls at t_i, twice at
the midpoint index t_{i+1} + (N//n)//2, and at t_{i+1}; weights 1/6, 1/3, 1/3, 1/6 on ε̂) and then PLMS from the
history of step-start ε̂: n + 9 model calls for n ≥ 4 steps. Parity holds to 1e-5 × scale (scale = max |x| over
the reference trajectory) wherever diffusers' PLMS step t → t − N//n lands on the next call's timestep (even
spacing: leading, trailing with n | N). Its first RK stage steps t_i → t_i − (N//n)//2, which for an odd N//n
(n = 8: 125) is one index above the midpoint t_{i+1} + (N//n)//2 the next call evaluates at; the twin does the
same (``diffusers_stage_target``, set by the converter), unisde's own PRK warm-up steps to the midpoint. With
linspace spacing (or trailing with n ∤ N) only the timesteps agree (the module docstring of
``unisde.samplers.pndm``).

The model is smooth and nonlinear in x and t, so a wrong timestep, input or coefficient shows.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDPMPipeline, PNDMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from unisde.core.schedule import NoiseSchedule
from unisde.diffusers.scheduler import UnifiedScheduler
from unisde.grids import make_grid
from unisde.plugins import get_sampler

SHAPE = (1, 2, 4, 4)
REL_TOL = 1e-5
TWIN_OPTIONS = {"prk_warmup": True, "diffusers_stage_target": True, "view": "ve"}  # from_config of the default

diffusers_logging.disable_progress_bar()


def eps_model(x, timestep):
    tau = float(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else float(timestep)
    return x * (0.8 + 1e-4 * tau) + 0.05 * torch.sin(3 * x + tau / 500)


def start_noise(seed=0):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def trajectory(scheduler, x, model=eps_model):
    """The pipeline loop; every prev_sample and max |x| over the states visited."""
    states, scale = [], float(x.abs().max())
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
        states.append(x)
        scale = max(scale, float(x.abs().max()))
    return states, scale


def per_step_errors(ref, uni, n, model_ref=eps_model, model_uni=eps_model):
    """max |x_uni − x_ref| / scale after every call, both schedulers at n steps from the same noise."""
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert torch.equal(uni.timesteps, ref.timesteps), (uni.timesteps.tolist(), ref.timesteps.tolist())
    expected, scale = trajectory(ref, start_noise(), model_ref)
    got, _ = trajectory(uni, start_noise(), model_uni)
    assert all(torch.isfinite(x).all() for x in expected)
    return [float((a - b).abs().max()) / scale for a, b in zip(got, expected)]


def convert(**config):
    ref = PNDMScheduler(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "pndm" and uni.sampler_options == TWIN_OPTIONS
    return ref, uni


# ---------------------------------------------------------------------------------------------- timesteps
@pytest.mark.parametrize(
    "config",
    [
        {},
        {"steps_offset": 1},
        {"timestep_spacing": "trailing"},
        {"timestep_spacing": "linspace"},
        {"num_train_timesteps": 500},
    ],
    ids=["leading", "leading-offset", "trailing", "linspace", "N=500"],
)
@pytest.mark.parametrize("n", [4, 5, 7, 8, 10, 25, 50, 333])
def test_timesteps_are_diffusers(config, n):
    """Every spacing and step count: the n + 9 timesteps (RK calls t_i, m_i, m_i, t_{i+1} for three steps, then
    PLMS from t_3), integer, midpoints included. Where diffusers' t → t − N//n steps land between its own listed
    timesteps (linspace; trailing with n ∤ N) the twin refuses the grid at set_timesteps instead."""
    ref, uni = convert(**config)
    ref.set_timesteps(n)
    big_n = ref.config.num_train_timesteps
    if set(np.diff(ref._timesteps).tolist()) != {big_n // n}:
        with pytest.raises(ValueError, match="diffusers' PNDM steps from t to t − N//n"):
            uni.set_timesteps(n)
        return
    uni.set_timesteps(n)
    assert uni.timesteps.dtype == torch.int64
    assert torch.equal(uni.timesteps, ref.timesteps), (uni.timesteps.tolist(), ref.timesteps.tolist())
    assert len(uni.timesteps) == n + 9


def test_fewer_than_four_steps():
    """diffusers' set_timesteps fails below 4 steps (three RK steps and one PLMS step); unisde takes the RK warm-up
    on the first n − 1 steps and PLMS on the last, which evaluates only at its start (so no midpoint call falls
    between the last grid time and the data): 4(n − 1) + 1 calls, a single DDIM step for n = 1."""
    ref, uni = convert()
    for n in (1, 2, 3):
        with pytest.raises(ValueError):
            ref.set_timesteps(n)
        uni.set_timesteps(n)
        assert len(uni.timesteps) == 4 * (n - 1) + 1
        x, _ = trajectory(uni, start_noise())
        assert torch.isfinite(x[-1]).all()
    sched = NoiseSchedule.from_diffusers_config({})
    grid = make_grid(sched, 1, "leading")
    x = start_noise().double()
    outs = [
        _loop_states(get_sampler(name)(sched, **opts), x, 0, lambda sample, k: 0.3 * sample, grid)[-1]
        for name, opts in (("pndm", {"prk_warmup": True}), ("ddim", {}))
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------- parity
PARITY_CONFIGS = {
    "leading-offset": {"steps_offset": 1},
    "leading-alpha-one": {"set_alpha_to_one": True},
    "trailing": {"timestep_spacing": "trailing"},
    "trailing-alpha-one": {"timestep_spacing": "trailing", "set_alpha_to_one": True},
    "sd-scaled-linear": {"steps_offset": 1, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cosine": {"steps_offset": 1, "beta_schedule": "squaredcos_cap_v2"},
}


@pytest.mark.parametrize("config", PARITY_CONFIGS.values(), ids=PARITY_CONFIGS.keys())
@pytest.mark.parametrize("n", [4, 10, 25])
def test_per_step_parity(config, n):
    ref, uni = convert(**config)
    errors = per_step_errors(ref, uni, n)
    assert max(errors) <= REL_TOL, [f"{e:.2g}" for e in errors]


@pytest.mark.parametrize("n", [8, 10])
def test_first_rk_stage_target_odd_and_even_step_ratio(n):
    """PNDMScheduler() at n = 8 (N//n = 125, odd) and 10 (100, even). diffusers' first RK stage moves the sample
    from t_i to the index t_i − (N//n)//2 (875 → 813 at n = 8) while the next call evaluates at the midpoint
    t_{i+1} + (N//n)//2 (812). The twin (``diffusers_stage_target``) steps where diffusers does: every call and the
    final sample within REL_TOL × scale. unisde's own PRK warm-up steps to the midpoint: the same as the twin for an
    even N//n, O(1e-3) off for an odd one (the quirk is real and the test can tell the two apart)."""
    ref, uni = convert()
    errors = per_step_errors(ref, uni, n)
    assert max(errors) <= REL_TOL, [f"{e:.2g}" for e in errors]
    big_n = ref.config.num_train_timesteps
    smp = uni._sampler
    s, sigma = smp.scales_and_sigmas(torch.tensor([(813 + 1) / big_n], dtype=torch.float64))
    if n == 8:  # the first stage's target is index 813: its transfer lands on that index's σ̃
        assert math.isclose(smp.transfer[0][0] / smp.transfer[0][1], float(s / sigma), rel_tol=1e-12)
        assert int(uni.timesteps[1]) == 812
    clean_options = {"prk_warmup": True, "diffusers_stage_target": False}
    clean = UnifiedScheduler.from_config(PNDMScheduler().config, sampler="pndm", sampler_options=clean_options)
    assert clean.sampler_options == {**clean_options, "view": "ve"}  # the twin's grid and view, without the quirk
    clean_errors = per_step_errors(PNDMScheduler(), clean, n)
    if (big_n // n) % 2:
        assert max(clean_errors) > 100 * REL_TOL, [f"{e:.2g}" for e in clean_errors]
    else:
        assert max(clean_errors) <= REL_TOL, [f"{e:.2g}" for e in clean_errors]


@pytest.mark.parametrize("n", [4, 10, 25])
def test_default_config_parity_up_to_the_last_call(n):
    """PNDMScheduler() (leading, steps_offset=0, set_alpha_to_one=False) evaluates at index 0 last. Every call but
    the last matches; the last differs because diffusers' final step goes from index 0 to ᾱ_0 (the identity: its
    sample keeps index 0's noise), while unisde's grid ends on the clean data there (``make_grid`` turns an end
    point at the last evaluation time into t = 0) — the next test."""
    ref, uni = convert()
    errors = per_step_errors(ref, uni, n)
    assert max(errors[:-1]) <= REL_TOL, [f"{e:.2g}" for e in errors]


def test_default_config_last_call():
    """diffusers' set_alpha_to_one=False last step (index 0 → ᾱ_0) is zero-length; the twin's grid keeps it."""
    ref, uni = convert()
    assert per_step_errors(ref, uni, 10)[-1] <= REL_TOL


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("n", [4, 10])
def test_other_parameterisations_run_the_same_method_on_eps(prediction_type, n):
    """The sampler sees only x̂0 and takes ε̂ = (x − s x̂0)/σ from it: a v- or x0-model gives the samples of
    diffusers' ε run with the equivalent ε-model ε = √ᾱ v + √(1 − ᾱ) x, resp. (x − √ᾱ x0)/√(1 − ᾱ), at each
    call's own (x, t). (diffusers' own v_prediction PNDM is another method: it combines the raw v outputs and
    converts them with the step's *start* sample, O(h) apart; its 'sample' prediction is a ValueError.)"""
    ref = PNDMScheduler(steps_offset=1)
    uni = UnifiedScheduler.from_config(PNDMScheduler(steps_offset=1, prediction_type=prediction_type).config)
    assert uni.sampler_options == TWIN_OPTIONS and uni.config.prediction_type == prediction_type
    abar = ref.alphas_cumprod.double()

    def other_model(x, t):  # a smooth v- or x0-model
        tau = float(t)
        return x * (0.3 - 1e-4 * tau) + 0.05 * torch.cos(2 * x + tau / 700)

    def as_eps(x, t):
        a = abar[int(t)]
        out = other_model(x.double(), t)
        eps = (
            a.sqrt() * out + (1 - a).sqrt() * x.double()
            if prediction_type == "v_prediction"
            else (x.double() - a.sqrt() * out) / (1 - a).sqrt()
        )
        return eps.float()

    errors = per_step_errors(ref, uni, n, model_ref=as_eps, model_uni=other_model)
    assert max(errors) <= REL_TOL, [f"{e:.2g}" for e in errors]


def test_from_config_round_trip_and_skip_prk_steps():
    """skip_prk_steps=False (the default) selects the PRK warm-up, True the two-call PLMS start; both convert back."""
    # skip_prk_steps=True: its counter restarts where an img2img pipeline enters (entry="restart")
    for skip, options in (
        (False, {"prk_warmup": True, "diffusers_stage_target": True}),
        (True, {"prk_warmup": False, "entry": "restart"}),
    ):
        options = {**options, "view": "ve"}  # the converter's config key: diffusers' PNDM steps in σ̃
        ref = PNDMScheduler(skip_prk_steps=skip)
        uni = UnifiedScheduler.from_config(ref.config)
        assert uni.config.sampler == "pndm" and uni.sampler_options == options
        back = PNDMScheduler.from_config(uni.config)
        assert back.config.skip_prk_steps is skip
    ref = PNDMScheduler()
    plms = UnifiedScheduler.from_config(ref.config, sampler="pndm", sampler_options={"prk_warmup": False})
    # (naming the twin's sampler may keep the class's quirk options, inert without the PRK warm-up)
    assert plms.sampler_options.get("prk_warmup") is False
    assert set(plms.sampler_options) <= {"prk_warmup", "diffusers_stage_target"}
    assert UnifiedScheduler(sampler="pndm").sampler_options.get("prk_warmup", False) is False  # unisde's default: PLMS


# ---------------------------------------------------------------------------------------------- DDPMPipeline
class _PNDMInDDPMPipeline(PNDMScheduler):
    """DDPMPipeline passes ``generator=`` to step, which PNDMScheduler.step does not take (it draws no noise)."""

    def step(self, model_output, timestep, sample, generator=None, return_dict=True):
        return super().step(model_output, timestep, sample, return_dict=return_dict)


class _TinyDenoisingUNet(UNet2DModel):
    """A tiny random UNet around the ε of data N(0, 0.25 I) (images in [−1, 1]): ε = σ x/(0.25 s² + σ²) + 0.1 · UNet,
    so the trajectory stays bounded and the images mostly unclamped (a bare random UNet drives x past 200 and
    clamps 99 % of the pixels, which would hide differences)."""

    def forward(self, sample, timestep, **kwargs):
        out = super().forward(sample, timestep, **kwargs)
        abar = float(PNDMScheduler().alphas_cumprod[int(timestep)])
        out.sample = 0.1 * out.sample + math.sqrt(1 - abar) * sample / (0.25 * abar + 1 - abar)
        return out


def _tiny_unet():
    torch.manual_seed(0)
    return _TinyDenoisingUNet(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(8, 16),
        norm_num_groups=4,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
    ).eval()


def _pipeline_run(scheduler, n):
    """The images of a DDPMPipeline run ("pt": x/2 + 0.5, clamped) and every (sample, t, output) of the UNet."""
    unet, seen = _tiny_unet(), []
    unet.register_forward_hook(lambda module, args, out: seen.append((args[0].clone(), int(args[1]), out.sample)))
    pipe = DDPMPipeline(unet=unet, scheduler=scheduler)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            images = pipe(
                batch_size=1, num_inference_steps=n, output_type="pt", generator=torch.Generator().manual_seed(0)
            ).images
    finally:
        torch.set_num_threads(before)
    return images, seen


@pytest.mark.parametrize("config", [{}, {"set_alpha_to_one": True}], ids=["default", "alpha-one"])
def test_ddpm_pipeline_parity(config):
    """``from_config(PNDMScheduler().config)`` in a DDPMPipeline with a tiny random UNet (_TinyDenoisingUNet): the
    same UNet inputs at every one of the n + 9 calls, and — where the grid's end is diffusers'
    (set_alpha_to_one=True, and the default's zero-length last step) — the same image."""
    n = 10
    ref = _PNDMInDDPMPipeline(**config)
    uni = UnifiedScheduler.from_config(PNDMScheduler(**config).config)
    assert uni.config.sampler == "pndm" and uni.sampler_options == TWIN_OPTIONS
    img_ref, seen_ref = _pipeline_run(ref, n)
    img_uni, seen_uni = _pipeline_run(uni, n)
    assert [t for _, t, _ in seen_uni] == [t for _, t, _ in seen_ref] and len(seen_ref) == n + 9
    scale = max(float(x.abs().max()) for x, _, _ in seen_ref)
    errors = [float((a[0] - b[0]).abs().max()) / scale for a, b in zip(seen_uni, seen_ref)]
    assert max(errors) <= REL_TOL, [f"{e:.2g}" for e in errors]
    assert float(((img_ref > 0) & (img_ref < 1)).float().mean()) > 0.9  # the comparison below sees the samples
    assert 2 * float((img_uni - img_ref).abs().max()) <= REL_TOL * scale  # image = x/2 + 0.5


# ---------------------------------------------------------------------------------------------- img2img entry
def _loop_states(smp, x, start, denoiser, grid=None):
    """Run ``smp.loop`` (prepared on ``grid`` when given) from call ``start`` with a denoiser D(x, k): the sample
    after each call, the last one being the loop's result."""
    if grid is not None:
        smp.prepare(grid)
    loop, out = smp.loop(x, start), []
    sample = next(loop)
    k = start
    try:
        while True:
            sample = loop.send((sample, denoiser(sample, k)))
            out.append(sample)
            k += 1
    except StopIteration as done:
        out.append(done.value)
    return out


def test_entered_at_an_rk_step_start_runs_the_remaining_rk_steps():
    """img2img at call 4i (a step start t_i): the RK steps from there are those of the full run from the same x
    (an RK step needs no history); PLMS then starts with the ε̂ of the steps taken (lower order first)."""
    sched = NoiseSchedule.from_diffusers_config({"steps_offset": 1})
    grid = make_grid(sched, 10, "leading", steps_offset=1)
    smp = get_sampler("pndm")(sched, prk_warmup=True)
    times = smp.prepare(grid)

    def denoiser(x, k):
        return 0.6 * x + 0.05 * torch.sin(3 * x + float(times[k]))

    full = _loop_states(smp, start_noise().double(), 0, denoiser)
    for i in (1, 2):
        part = _loop_states(smp, full[4 * i - 1], 4 * i, denoiser)
        assert len(part) == len(times) - 4 * i
        for a, b in zip(part[: 4 * (3 - i)], full[4 * i :]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        assert torch.isfinite(part[-1]).all()


def test_entered_inside_an_rk_step_takes_ddim_steps_from_where_it_is():
    """img2img at an interior call of RK step i (the pipeline slices timesteps per call): x lies at that call's
    own time and there is no x_i; each remaining call of the step takes DDIM's step from its own point to its
    stage's end — the first midpoint call to the midpoint (x stays), the second to t_{i+1}, the call at t_{i+1}
    to t_{i+1} (x stays) — and step i + 1 is a full RK step."""
    sched = NoiseSchedule.from_diffusers_config({"steps_offset": 1})
    grid = make_grid(sched, 10, "leading", steps_offset=1)
    smp = get_sampler("pndm")(sched, prk_warmup=True)
    times = smp.prepare(grid)
    ddim = get_sampler("ddim")(sched)
    x = start_noise().double()

    def denoiser(sample, k):
        return 0.6 * sample + 0.05 * torch.sin(3 * sample + float(times[k]))

    for k in (5, 6, 7):  # calls m_1, m_1, t_2 of step 1 (t_1 → t_2)
        states = _loop_states(smp, x, k, denoiser)
        for j in range(k, 8):
            sample = x if j == k else states[j - k - 1]
            if j == 6:  # m_1 → t_2
                expected = _loop_states(
                    ddim,
                    sample,
                    0,
                    lambda s, _: denoiser(s, j),
                    torch.tensor([float(times[6]), float(times[7])], dtype=torch.float64),
                )[-1]
            else:  # m_1 → m_1, t_2 → t_2
                expected = sample
            torch.testing.assert_close(states[j - k], expected, rtol=1e-12, atol=1e-12)
        tail = _loop_states(smp, states[7 - k], 8, denoiser)  # step 2 from t_2: as a loop entered there
        assert len(states) - (8 - k) == len(tail)
        for c, d in zip(states[8 - k :], tail):
            torch.testing.assert_close(c, d, rtol=1e-12, atol=1e-12)


def test_img2img_through_the_scheduler():
    """What an img2img pipeline does (set_begin_index(t_start · order), order 1, then timesteps[t_start:]) works
    at every entry call and gives finite samples. diffusers' PNDM has no set_begin_index: its PRK counter restarts
    at 0 and steps from timesteps[0] whatever it is fed, so its img2img with PRK steps is not a restart of its own
    method (shown here: entered at call 4 with its own x at t_1, its next sample differs) and there is nothing
    well-defined to match."""
    _, uni = convert(steps_offset=1)
    for start in range(10 + 9):
        uni.set_timesteps(10)
        uni.set_begin_index(start)
        x = start_noise()
        for t in uni.timesteps[start:]:
            x = uni.step(eps_model(x, t), t, x).prev_sample
        assert torch.isfinite(x).all()
    ref = PNDMScheduler(steps_offset=1)
    assert not hasattr(ref, "set_begin_index")
    ref.set_timesteps(10)
    states, _ = trajectory(ref, start_noise())
    ref.set_timesteps(10)
    x = states[3]  # x at t_1, entered at call 4 (t_1)
    t4 = ref.timesteps[4]
    x = ref.step(eps_model(x, t4), t4, x).prev_sample
    assert float((x - states[4]).abs().max()) > 1e-3


# ---------------------------------------------------------------------------------------------- other grids
def test_midpoints_off_the_index_grids():
    """Closed-form schedules, and fractional (Karras, uniform-λ) grids on a table: the midpoint calls sit at
    (t_i + t_{i+1})/2; the sampler runs on such grids through the scheduler."""
    for sched, grid_kind in (
        (NoiseSchedule.from_diffusers_config({}), "karras"),
        (NoiseSchedule.from_diffusers_config({}), "uniform_lambda"),
        (NoiseSchedule.vp_cosine(), "leading"),
        (NoiseSchedule.edm(), "karras"),
    ):
        grid = make_grid(sched, 6, grid_kind)
        times = get_sampler("pndm")(sched, prk_warmup=True).prepare(grid)
        assert len(times) == 6 + 9
        for i in range(3):
            assert math.isclose(float(times[4 * i + 1]), 0.5 * float(grid[i] + grid[i + 1]), rel_tol=1e-12)
            assert float(times[4 * i + 1]) == float(times[4 * i + 2])
            assert float(times[4 * i + 3]) == float(grid[i + 1])
    for grid_kind in ("karras", "uniform_lambda"):
        uni = UnifiedScheduler(sampler="pndm", sampler_options={"prk_warmup": True}, time_grid=grid_kind)
        uni.set_timesteps(6)
        assert bool((uni._eval_times[1:] <= uni._eval_times[:-1]).all())
        states, _ = trajectory(uni, start_noise() * uni.init_noise_sigma)
        assert torch.isfinite(states[-1]).all()

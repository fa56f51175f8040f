"""Flow matching through the front door: FlowMatch Euler/Heun configs convert at live parity (timesteps, sigmas
and samples), DDIM η = 0 on the rectified flow is FlowMatch Euler to 1e-12, the flow parameterisation, and
bad input refused before any work."""

from __future__ import annotations

import diffusers
import pytest
import torch

import unisde
from unisde import NoiseSchedule
from unisde.analytic import Gaussian
from unisde.scheduler import UnifiedScheduler

F64 = torch.float64


def model(x, t):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1)[0]
    return 0.6 * x + 0.05 * torch.sin(3 * x + t / 1000.0)


def run(sched, x, **kw):
    for t in sched.timesteps:
        x = sched.step(model(x, t), t, x, **kw).prev_sample
    return x


CONFIGS = [
    ({}, {}),
    ({"shift": 3.0}, {}),
    ({"use_dynamic_shifting": True}, {"mu": 0.8}),
    ({"shift": 3.0, "shift_terminal": 0.1}, {}),
    ({"use_karras_sigmas": True, "shift": 3.0}, {}),
    ({"use_exponential_sigmas": True}, {}),
    ({"use_beta_sigmas": True, "shift": 2.0}, {}),
    ({"use_dynamic_shifting": True, "time_shift_type": "linear"}, {"mu": 1.5}),
]


@pytest.mark.parametrize("config, call", CONFIGS)
@pytest.mark.parametrize("n", [1, 4, 12])
def test_flowmatch_euler_parity(config, call, n):
    ref = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    uni = UnifiedScheduler.from_config(ref.config)
    if n == 1 and config.get("shift_terminal"):  # diffusers divides 0 by 0 here (NaN timesteps); unisde refuses
        with pytest.raises(ValueError, match="shift_terminal=0.1 .* at least 2 levels"):
            uni.set_timesteps(n, **call)
        return
    assert uni.config.sampler == "ddim" and uni.init_noise_sigma == 1.0
    for sched in (ref, uni):
        sched.set_timesteps(n, **call)
    torch.testing.assert_close(uni.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(uni.sigmas, ref.sigmas, rtol=0, atol=0)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    expected, got = run(ref, x.clone()), run(uni, x.clone())
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_flux_style_sigmas_and_mu():
    """Flux passes its own base sigmas with mu; they go through the same shift."""
    import numpy as np

    ref = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.base_shift == 0.5 and uni.config.max_image_seq_len == 4096  # kept for pipelines
    sigmas = np.linspace(1.0, 1 / 7, 7)
    for sched in (ref, uni):
        sched.set_timesteps(sigmas=sigmas, mu=0.9)
    torch.testing.assert_close(uni.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(uni.sigmas, ref.sigmas, rtol=0, atol=0)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_flowmatch_heun_parity(shift):
    ref = diffusers.FlowMatchHeunDiscreteScheduler(shift=shift)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "edm" and uni.sampler_options["view"] == "flow" and uni.order == 2
    for sched in (ref, uni):
        sched.set_timesteps(6)
    torch.testing.assert_close(uni.timesteps, ref.timesteps, rtol=0, atol=0)
    torch.testing.assert_close(uni.sigmas, ref.sigmas, rtol=0, atol=0)  # aligned with timesteps, then 0
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    expected, got = run(ref, x.clone()), run(uni, x.clone())
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_ddim_on_the_rectified_flow_is_flowmatch_euler_to_1e12():
    """x' = x + (t' − t) u exactly, from the first step at t = 1 (no zero-SNR cap there)."""
    schedule = NoiseSchedule.from_name("rectified-flow")
    data = Gaussian(torch.full((3,), 0.2, dtype=F64), 0.3)
    flow = unisde.get_parameterization("flow_prediction")
    noise = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)

    def velocity(x, timestep):
        t = torch.as_tensor(timestep, dtype=F64).reshape(-1).expand(x.shape[0]) / 1000
        return flow.from_denoised(data.denoise(x, t, schedule), x, t, schedule)

    ts = torch.linspace(1, 0, 9, dtype=F64)
    x = noise.clone()
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * velocity(x, t * 1000)
    out = unisde.sample(
        velocity,
        noise,
        schedule=schedule,
        parameterization="flow_prediction",
        sampler="ddim",
        timesteps=(ts[:-1] * 1000).tolist(),
    )
    assert (out - x).abs().max() <= 1e-12


def test_flow_parameterization_is_the_conditional_velocity():
    schedule = NoiseSchedule.from_name("rectified-flow")
    flow = unisde.get_parameterization("flow")
    x0, eps = torch.randn(4, 3, dtype=F64), torch.randn(4, 3, dtype=F64)
    t = torch.tensor([0.0, 0.3, 0.7, 1.0], dtype=F64)
    xt = schedule.add_noise(x0, eps, t)
    u = eps - x0
    torch.testing.assert_close(flow.to_denoised(u, xt, t, schedule), x0, rtol=0, atol=1e-12)
    _, target = flow.training_target(x0[1:3], eps[1:3], t[1:3], schedule)
    torch.testing.assert_close(target, u[1:3], rtol=0, atol=1e-12)
    # on a VP schedule too: u = s′x0 + σ′ε
    vp = NoiseSchedule.from_name("vp-linear")
    tv = torch.full((4,), 0.4, dtype=F64)
    h = 1e-6
    ds = (vp.s(tv + h) - vp.s(tv - h)) / (2 * h)
    dsig = (vp.sigma(tv + h) - vp.sigma(tv - h)) / (2 * h)
    u_vp = ds[:, None] * x0 + dsig[:, None] * eps
    torch.testing.assert_close(flow.to_denoised(u_vp, vp.add_noise(x0, eps, tv), tv, vp), x0, rtol=0, atol=1e-6)


def test_scale_noise_is_the_flow_marginal():
    ref = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    uni = UnifiedScheduler.from_config(ref.config)
    for sched in (ref, uni):
        sched.set_timesteps(10)
    x0, noise = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    t = ref.timesteps[4:5]
    ref.set_begin_index(4)
    torch.testing.assert_close(uni.scale_noise(x0, t, noise), ref.scale_noise(x0, t, noise), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, call, message",
    [
        ({}, {"mu": 0.5}, "use_dynamic_shifting=False"),
        ({"use_dynamic_shifting": True}, {}, "needs mu"),
        ({}, {"sigmas": [1.2, 0.5]}, r"\[0, 1\]"),
        ({}, {"timesteps": [900.0, 500.0], "sigmas": [0.9]}, "one timestep per sigma"),  # alone they are taken
    ],
)
def test_bad_flow_calls_refused_before_work(kwargs, call, message):
    uni = UnifiedScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(**kwargs).config)
    n = {} if "sigmas" in call or "timesteps" in call else {"num_inference_steps": 4}
    with pytest.raises(ValueError, match=message):
        uni.set_timesteps(**n, **call)


def test_bad_flow_configs_refused():
    with pytest.raises(ValueError, match="shift"):
        UnifiedScheduler.from_config(diffusers.FlowMatchEulerDiscreteScheduler(shift=-1.0).config)
    with pytest.raises(ValueError, match="use_dynamic_shifting=True needs a flow-matching time grid"):
        UnifiedScheduler(use_dynamic_shifting=True)

"""Converting a DPMSolverMultistepScheduler config keeps its algorithm *and* its grid: diffusers' multistep
schedulers space ``leading`` / ``linspace`` over n + 1 points and drop index 0 (unisde's ``*_multistep`` grids).
Live parity with the real diffusers scheduler on an exact Gaussian ε-model, same starting noise."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from unisde import list_samplers  # noqa: E402
from unisde.analytic import Gaussian  # noqa: E402
from unisde.diffusers.scheduler import UnifiedScheduler  # noqa: E402

CONFIGS = [
    {},
    {"timestep_spacing": "leading", "steps_offset": 1},
    {"timestep_spacing": "trailing"},
    {"solver_order": 3},
    {"timestep_spacing": "leading", "solver_order": 3, "prediction_type": "v_prediction"},
]


def _run(scheduler, model, x_start, n):
    scheduler.set_timesteps(n)
    x = x_start * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample
    return x


@pytest.mark.skipif(
    "dpmsolver++" not in list_samplers(), reason="the unisde-dpmsolver plugin is installed by `make test`"
)
@pytest.mark.parametrize("kwargs", CONFIGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default")
@pytest.mark.parametrize("n", [5, 12, 25])
def test_dpmsolver_config_converts_to_the_same_grid_and_samples(kwargs, n):
    ref = diffusers.DPMSolverMultistepScheduler(**kwargs)
    uni = UnifiedScheduler.from_config(ref.config)
    assert uni.config.sampler == "dpmsolver++"
    assert uni._sampler.opts["solver_order"] == ref.config.solver_order
    ref.set_timesteps(n)
    uni.set_timesteps(n)
    assert torch.equal(ref.timesteps.to(torch.int64), uni.timesteps.to(torch.int64))
    model = Gaussian(torch.full((16,), 0.3), 0.25).as_model(ref.config.prediction_type, uni.noise_schedule)
    x_start = torch.randn(3, 16, generator=torch.Generator().manual_seed(n))
    expected, got = _run(ref, model, x_start, n), _run(uni, model, x_start, n)
    scale = max(1.0, float(expected.abs().max()))
    assert float((expected - got).abs().max()) <= 1e-5 * scale


def test_multistep_grids_drop_the_index_zero_point():
    from unisde.grids import discrete_indices

    assert discrete_indices(1000, 10, "leading_multistep", steps_offset=1).tolist() == [901 - 90 * k for k in range(10)]
    lin = discrete_indices(1000, 4, "linspace_multistep")
    assert lin.tolist() == [999, 749, 500, 250] and 0 not in lin

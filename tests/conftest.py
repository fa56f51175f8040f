"""Shared fixtures: one factory per kind of schedule the package must handle, built from real configs."""

from __future__ import annotations

import math

import pytest
import torch

from unisde import NoiseSchedule

# One intra-op thread per test process: the suite runs as `pytest -n 2` on 2 cores, and with a 2-thread pool
# on a busy machine small reductions such as Tensor.max(dim) measured 6–20 ms instead of ~5 µs (threads
# waiting for a core), which made ODE-integration tests 100× slower.
torch.set_num_threads(1)

# name -> zero-argument factory. Tables come from the same configs diffusers users ship; closed forms use the
# constructors' defaults (the published parameter values).
SCHEDULES = {
    "ddpm-linear": lambda: NoiseSchedule.from_diffusers_config({"beta_schedule": "linear"}),
    "ddpm-cosine": lambda: NoiseSchedule.from_diffusers_config({"beta_schedule": "squaredcos_cap_v2"}),
    "zero-snr": lambda: NoiseSchedule.from_diffusers_config(
        {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True}
    ),
    "ncsn-table": lambda: NoiseSchedule.from_sigmas(torch.exp(torch.linspace(math.log(0.01), math.log(50.0), 200))),
    "vp-linear": NoiseSchedule.vp_linear,
    "vp-cosine": NoiseSchedule.vp_cosine,
    "sub-vp": NoiseSchedule.sub_vp,
    "ve": NoiseSchedule.ve,
    "edm": NoiseSchedule.edm,
}


@pytest.fixture(params=sorted(SCHEDULES))
def schedule(request) -> NoiseSchedule:
    """Every kind of schedule, one test per kind (the test id is the name)."""
    return SCHEDULES[request.param]()


@pytest.fixture
def make_schedule():
    """``make_schedule(name)``: a fresh schedule from :data:`SCHEDULES`."""
    return lambda name: SCHEDULES[name]()


@pytest.fixture
def generator() -> torch.Generator:
    """A CPU generator with a fixed seed, so Monte-Carlo bounds are checked on reproducible draws."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def k_sampling():
    """k-diffusion's own ``sampling`` module, unmodified (:func:`unisde.bench.kdiffusion.load_sampling`); skips only
    when k-diffusion itself is missing (``make install-test`` installs it)."""
    from unisde.bench.kdiffusion import load_sampling

    module = load_sampling()
    if module is None:
        pytest.skip("k-diffusion is not installed (make install-test installs it)")
    return module

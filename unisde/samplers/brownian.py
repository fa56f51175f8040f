r"""Brownian-tree noise: the noise of a step from σ̃ to σ̃' drawn as the normalised increment of one Brownian path.

k-diffusion's SDE samplers and diffusers' DPMSolverSDE and CosineDPMSolverMultistep schedulers draw a stochastic
step's fresh noise not from a generator stream but from one Brownian motion W over the VE-view noise levels
σ̃ ∈ [σ̃_lo, σ̃_hi], fixed by an integer seed:

    z(σ̃, σ̃') = (W(σ̃') − W(σ̃)) / √|σ̃' − σ̃|.

Each z is N(0, I) and those of disjoint intervals are independent, so a solver sees exactly the Gaussian noise it
expects; in addition the path does not depend on the step sizes, so refining the grid refines the *same*
Brownian path (which is what makes strong convergence measurable and the samples stable across step counts). The
path is torchsde's Brownian interval (Kidger et al. 2021 [BrownianInterval]), reached through diffusers'
``BrownianTreeNoiseSampler`` so that a twin of those schedulers draws the very same numbers: the same seed (the
step's generator's ``initial_seed()``, or a fresh random seed without a generator), the same interval (the
schedule's σ̃ range, as those classes take their config's σ_min, σ_max) and the same float32 query points.
torchsde is an optional dependency: asking for this noise without it is a clear error.
"""

from __future__ import annotations

import torch


class BrownianTreeNoise:
    """z(σ̃, σ̃') for one sampling loop: built on first use from the first draw's sample (shape, dtype, device)
    and generator, then queried with the VE-view levels of each stochastic step.

    ``ve_lo``, ``ve_hi``: the interval of the Brownian path (σ̃_lo < σ̃_hi, Python floats); ``seed``: the path's
    seed when fixed (diffusers' ``noise_sampler_seed``), else the first draw's generator decides (see above)."""

    def __init__(self, ve_lo: float, ve_hi: float, seed: int | None = None):
        if not 0.0 <= ve_lo < ve_hi:
            raise ValueError(f"a Brownian tree needs 0 <= sigma_lo < sigma_hi, got {ve_lo}, {ve_hi}")
        self.ve_lo, self.ve_hi = float(ve_lo), float(ve_hi)
        self.seed = seed
        self.tree = None

    def __call__(
        self, sample: torch.Tensor, ve_from: float, ve_to: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Standard normal noise shaped like ``sample`` for the step from σ̃ = ``ve_from`` to ``ve_to``."""
        if self.tree is None:
            try:
                from diffusers.schedulers.scheduling_dpmsolver_sde import BrownianTreeNoiseSampler
            except ImportError as exc:  # torchsde missing
                raise ImportError(f"Brownian-tree noise needs torchsde (pip install torchsde): {exc}") from None
            seed = self.seed
            if seed is None and generator is not None:
                seed = generator.initial_seed()
            self.tree = BrownianTreeNoiseSampler(sample, self.ve_lo, self.ve_hi, seed=seed)
        # float32 query points, as diffusers' schedulers keep their sigmas (the path is continuous, not smooth:
        # a query point moved by one float32 ulp changes the increment by ~√ulp)
        z = self.tree(torch.tensor(ve_from, dtype=torch.float32), torch.tensor(ve_to, dtype=torch.float32))
        return z.to(device=sample.device, dtype=sample.dtype)

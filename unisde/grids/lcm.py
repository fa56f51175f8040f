r"""The ``lcm`` time grid: the timestep selection of diffusers' LCMScheduler and TCDScheduler (Luo et al. 2023
[LCM], the "skipping-step" schedule), registered through the ``unisde_register_grids`` hook like every other grid.

A latent consistency model is distilled on ``original_inference_steps`` (50) evenly spaced training indices
τ_j = j·k − 1, j = 1 … ⌊original_inference_steps · strength⌋, k = ⌊N / original_inference_steps⌋ (N training
timesteps); n inference steps take every (len/n)-th of them from the top:

    τ^{origin} = reversed(τ_j),      timesteps = τ^{origin}[⌊linspace(0, len, n, endpoint=False)⌋],

and index i sits at t = (i + 1)/N (unisde's table convention). ``original_inference_steps=None`` selects from
every training index 0 … ⌊N · strength⌋ − 1 (TCDScheduler's rule when ``set_timesteps`` is given
``original_inference_steps``). ``strength`` < 1 (img2img) truncates the origin list the same way diffusers does
before the selection. On a closed-form schedule the same indices are read on its nominal N
(``num_train_timesteps``, 1000 by default).
"""

from __future__ import annotations

import numpy as np
import torch

from unisde._tensor import DTYPE
from unisde.core.schedule import NoiseSchedule
from unisde.grids import Grid
from unisde.plugins import hookimpl
from unisde.samplers.base import Option


def _original_steps(value):
    return None if value is None or value >= 1 else "must be a positive integer (or None: every training index)"


def _strength(value):
    return None if 0.0 < value <= 1.0 else "must lie in (0, 1]"


def lcm_indices(num_train: int, n: int, original_inference_steps: int | None = 50, strength: float = 1.0) -> np.ndarray:
    """The n training indices (descending, int64) LCMScheduler/TCDScheduler.set_timesteps selects."""
    if original_inference_steps is None:
        origin = np.arange(0, int(num_train * strength))
        limit, label = num_train, f"num_train_timesteps={num_train}"
    else:
        if original_inference_steps > num_train:
            raise ValueError(
                f"time grid 'lcm': original_inference_steps={original_inference_steps} exceeds the "
                f"schedule's {num_train} training timesteps"
            )
        k = num_train // original_inference_steps
        origin = np.arange(1, int(original_inference_steps * strength) + 1) * k - 1
        limit, label = original_inference_steps, f"original_inference_steps={original_inference_steps}"
    if n > limit:
        raise ValueError(
            f"time grid 'lcm': num_inference_steps={n} exceeds {label}: the steps are a subset of those timesteps"
        )
    if len(origin) // n < 1:
        raise ValueError(
            f"time grid 'lcm': only {len(origin)} timesteps remain at strength={strength} "
            f"({label}), fewer than num_inference_steps={n}; lower num_inference_steps or raise strength"
        )
    origin = origin[::-1].copy()
    return origin[np.floor(np.linspace(0, len(origin), num=n, endpoint=False)).astype(np.int64)]


def _lcm(schedule: NoiseSchedule, n: int, original_inference_steps=50, strength=1.0) -> torch.Tensor:
    num_train = int(schedule.num_train_timesteps or 1000)
    idx = lcm_indices(num_train, n, original_inference_steps, strength)
    return torch.as_tensor((idx + 1) / num_train, dtype=DTYPE)


LCM_GRID = Grid(
    "lcm",
    _lcm,
    {
        "original_inference_steps": Option(
            50,
            (int, type(None)),
            "the distillation's number of timesteps (None: every training index)",
            _original_steps,
        ),
        "strength": Option(
            1.0,
            (float,),
            "img2img strength: keep the lowest ⌊original_inference_steps · strength⌋ timesteps before selecting",
            _strength,
        ),
    },
    "LCM/TCD: every (len/n)-th of the original_inference_steps distillation timesteps (Luo et al. 2023)",
)


@hookimpl
def unisde_register_grids(register):
    register(LCM_GRID)

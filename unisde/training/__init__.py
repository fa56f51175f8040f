"""Training diffusion models under any schedule × parameterisation: objectives, data, the accelerate loop."""

from unisde.training.config import resolve_parameterization, resolve_schedule
from unisde.training.objectives import (
    LOSS_WEIGHTINGS,
    NOISE_DISTRIBUTIONS,
    WEIGHTING_SCHEMES,
    DenoisingScoreMatching,
    flow_noise_level,
    make_objective,
    make_train_step,
    output_loss_weight,
    sample_flow_noise_level,
    sample_time,
    x0_loss_weight,
)

__all__ = [
    "LOSS_WEIGHTINGS",
    "NOISE_DISTRIBUTIONS",
    "WEIGHTING_SCHEMES",
    "flow_noise_level",
    "sample_flow_noise_level",
    "DenoisingScoreMatching",
    "make_objective",
    "make_train_step",
    "output_loss_weight",
    "sample_time",
    "x0_loss_weight",
    "resolve_schedule",
    "resolve_parameterization",
]

"""Training diffusion models under any schedule × parameterisation: objectives, data, the accelerate loop."""

from unisde.training.config import resolve_parameterization, resolve_schedule
from unisde.training.objectives import (LOSS_WEIGHTINGS, NOISE_DISTRIBUTIONS, DenoisingScoreMatching, make_objective,
                         make_train_step, output_loss_weight, sample_time, x0_loss_weight)

__all__ = ["LOSS_WEIGHTINGS", "NOISE_DISTRIBUTIONS", "DenoisingScoreMatching", "make_objective", "make_train_step",
           "output_loss_weight", "sample_time", "x0_loss_weight", "resolve_schedule", "resolve_parameterization"]

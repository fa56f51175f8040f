"""Parameterisations: what a model's raw output means (ε, x0, v, score, EDM). Each is a plugin registered
through :func:`unisde_register_parameterizations`, exactly as a third-party one would be."""

from unisde.parameterizations.base import (
    Parameterization,
    eps_from_denoised,
    schedule_coefficients,
    score_from_denoised,
)
from unisde.parameterizations.builtin import (
    BUILTIN_PARAMETERIZATIONS,
    EDMParameterization,
    EpsilonParameterization,
    SampleParameterization,
    ScoreParameterization,
    VPredictionParameterization,
)
from unisde.plugins import hookimpl


@hookimpl
def unisde_register_parameterizations(register):
    for cls in BUILTIN_PARAMETERIZATIONS:
        register(cls)


__all__ = [
    "Parameterization",
    "eps_from_denoised",
    "score_from_denoised",
    "schedule_coefficients",
    "EpsilonParameterization",
    "SampleParameterization",
    "VPredictionParameterization",
    "ScoreParameterization",
    "EDMParameterization",
]

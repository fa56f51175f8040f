r"""Flow-matching time grids: diffusers' FlowMatch spacing with shift, dynamic shifting by ``mu``,
``shift_terminal`` and Karras/exponential/beta σ spacings, as one registered grid.

Shifts change *which* times are visited, not the forward process, so they are grid options (Esser et al. 2024,
§5.3.2 [SD3]: t ↦ shift·t/(1 + (shift − 1) t); its resolution-dependent form is the dynamic shift by μ). The
grid works in the flow noise level τ = σ/(s + σ) ∈ [0, 1], which is t itself on the rectified flow s = 1 − t,
σ = t; on any other schedule τ is mapped to t through σ̃ = σ/s = τ/(1 − τ), so the same spacing serves every
model. The values reproduce diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps`` exactly, its float32
rounding included (a twin keeps its class's quirks): the training table's shifted σ_min, the linspace between
the table's ends, the shift, ``shift_terminal``'s stretch, the optional Karras/exponential/beta respacing.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from unisde._tensor import DTYPE
from unisde.core.kernels import t_from_flow_sigma  # noqa: F401 (re-exported: the grids' τ → t map)
from unisde.core.schedule import NoiseSchedule
from unisde.grids import Grid
from unisde.plugins import hookimpl
from unisde.samplers.base import Option, positive

SPACINGS = ("linear", "karras", "exponential", "beta")
LEVELS = ("flowmatch", "unipc", "dpmsolver")


def _open_unit(value):
    return None if value is None or 0.0 < value < 1.0 else "must lie in (0, 1)"


def _sigmas_list(value):
    if value is None:
        return None
    if not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0.0 <= v <= 1.0 for v in value
    ):
        return f"flow sigmas must be numbers in [0, 1], got {list(value)[:8]}"
    return None


def time_shift(t: np.ndarray, shift: float | None = None, mu: float | None = None, kind: str = "exponential"):
    """The SD3/Flux shifts of flow noise levels: static t ↦ shift·t/(1 + (shift − 1)t); dynamic (μ) exponential
    t ↦ e^μ/(e^μ + 1/t − 1) or linear t ↦ μ/(μ + 1/t − 1)."""
    if mu is not None:
        with np.errstate(divide="ignore"):
            inv = 1.0 / t - 1.0
        return math.exp(mu) / (math.exp(mu) + inv) if kind == "exponential" else mu / (mu + inv)
    return shift * t / (1 + (shift - 1) * t)


def flow_sigmas(
    n: int,
    *,
    num_train_timesteps: int = 1000,
    shift: float = 1.0,
    use_dynamic_shifting: bool = False,
    mu: float | None = None,
    time_shift_type: str = "exponential",
    shift_terminal: float | None = None,
    spacing: str = "linear",
    base_sigmas=None,
    levels: str = "flowmatch",
) -> torch.Tensor:
    """Flow noise levels τ (n, decreasing, float64), as diffusers computes them: ``levels="flowmatch"`` as FlowMatch
    Euler (float32 values), ``"unipc"`` / ``"dpmsolver"`` as UniPC / DPM-Solver multistep with ``use_flow_sigmas``
    (float64 values, before those classes' cast of ``sigmas`` to float32; their int64 ``timesteps`` are
    ⌊τ N⌋ of these)."""
    if levels != "flowmatch":
        return _multistep_flow_sigmas(
            n,
            levels,
            num_train_timesteps=num_train_timesteps,
            shift=shift,
            use_dynamic_shifting=use_dynamic_shifting,
            mu=mu,
            time_shift_type=time_shift_type,
            shift_terminal=shift_terminal,
            spacing=spacing,
            base_sigmas=base_sigmas,
        )
    if use_dynamic_shifting and mu is None:
        raise ValueError(
            "this flow grid uses dynamic shifting: set_timesteps needs mu (pipelines compute it from the "
            "image sequence length)"
        )
    if mu is not None and not use_dynamic_shifting:
        raise ValueError(
            f"mu={mu} was given but the scheduler config has use_dynamic_shifting=False (diffusers' "
            "FlowMatch classes ignore it; unisde refuses rather than drop it silently); set "
            "use_dynamic_shifting=True or drop mu"
        )
    N = int(num_train_timesteps)
    train = torch.from_numpy(np.linspace(1, N, N, dtype=np.float32)[::-1].copy()).to(torch.float32) / N
    if not use_dynamic_shifting:
        train = shift * train / (1 + (shift - 1) * train)
    sigma_max, sigma_min = train[0].item(), train[-1].item()
    if base_sigmas is None:
        base = np.linspace(sigma_max * N, sigma_min * N, n) / N
    else:
        base = np.array(base_sigmas).astype(np.float32)
    out = time_shift(base, mu=mu, kind=time_shift_type) if use_dynamic_shifting else time_shift(base, shift=shift)
    if shift_terminal:
        out = _stretch_to_terminal(out, shift_terminal)
    out = _respace(out, spacing)
    return torch.from_numpy(np.asarray(out)).to(torch.float32).to(DTYPE)


def _stretch_to_terminal(out, shift_terminal):
    if len(out) < 2 or float(out[-1]) >= 1.0:
        raise ValueError(
            f"shift_terminal={shift_terminal} stretches the grid so that its last level is "
            f"{shift_terminal}; that needs at least 2 levels below 1 (got {len(out)})"
        )
    one_minus = 1 - out
    return 1 - one_minus / (one_minus[-1] / (1 - shift_terminal))


def _multistep_flow_sigmas(
    n,
    levels,
    *,
    num_train_timesteps,
    shift,
    use_dynamic_shifting,
    mu,
    time_shift_type,
    shift_terminal,
    spacing,
    base_sigmas,
):
    """UniPC's and DPM-Solver multistep's ``use_flow_sigmas`` levels (float64).

    ``unipc``: base levels linspace(1, 1/N, n + 1) without the last (or the ``sigmas`` a pipeline passes, as given),
    shifted by ``shift`` (the class's ``flow_shift``) or dynamically by μ, stretched to ``shift_terminal``, and
    the first level lowered by 10⁻⁶ when it is 1 (UniPC's guard against log 0).
    ``dpmsolver``: 1 − linspace(1, 1/N, n + 1) reversed without its 0, i.e. the levels start below 1 at the shifted
    1 − 1/N; μ sets the shift to e^μ (DPMSolverMultistepScheduler writes ``flow_shift = exp(mu)``), and with
    ``use_dynamic_shifting`` but no μ the static shift applies, as there."""
    N = int(num_train_timesteps)
    if levels == "dpmsolver":
        if base_sigmas is not None:
            raise ValueError(
                "DPMSolverMultistepScheduler's flow levels take no custom sigmas (its set_timesteps has "
                "no sigmas argument); pass num_inference_steps"
            )
        if mu is not None and not use_dynamic_shifting:
            raise ValueError(
                f"mu={mu} was given but the scheduler config has use_dynamic_shifting=False "
                "(DPMSolverMultistepScheduler refuses it too)"
            )
        if mu is not None and time_shift_type != "exponential":
            raise ValueError(f"mu needs time_shift_type='exponential' here, got {time_shift_type!r}")
        factor = float(np.exp(mu)) if mu is not None else shift
        base = (1.0 - np.linspace(1, 1 / N, n + 1))[::-1][:-1].copy()
        out = factor * base / (1 + (factor - 1) * base)
    else:
        if use_dynamic_shifting and mu is None:
            raise ValueError("this flow grid uses dynamic shifting: set_timesteps needs mu")
        if mu is not None and not use_dynamic_shifting:
            raise ValueError(
                f"mu={mu} was given but the scheduler config has use_dynamic_shifting=False (UniPC would "
                "ignore it; unisde refuses rather than drop it silently)"
            )
        base = np.linspace(1, 1 / N, n + 1)[:-1] if base_sigmas is None else np.array(base_sigmas, dtype=np.float64)
        out = time_shift(base, mu=mu, kind=time_shift_type) if use_dynamic_shifting else time_shift(base, shift=shift)
        if shift_terminal:
            out = _stretch_to_terminal(out, shift_terminal)
        out = np.array(out, dtype=np.float64)
        if abs(out[0] - 1) < 1e-6:
            out[0] -= 1e-6
    out = _respace(np.asarray(out, dtype=np.float64), spacing)
    return torch.from_numpy(np.asarray(out, dtype=np.float64)).to(DTYPE)


def _respace(out, spacing):
    """Karras/exponential/beta respacing between the ends of the shifted levels (identity for ``linear``)."""
    if spacing != "linear":
        hi, lo = float(out[0]), float(out[-1])
        m = len(out)
        if spacing == "karras":
            ramp = np.linspace(0, 1, m)
            out = (hi ** (1 / 7.0) + ramp * (lo ** (1 / 7.0) - hi ** (1 / 7.0))) ** 7.0
        elif spacing == "exponential":
            if not lo > 0:
                raise ValueError(
                    f"flow grid: exponential σ spacing needs a last level above 0 (log-spaced), got {lo}; sigmas "
                    "passed to set_timesteps with this spacing cannot end in 0 (diffusers fails on log 0 there too)"
                )
            out = np.exp(np.linspace(math.log(hi), math.log(lo), m))
        else:  # beta(0.6, 0.6) quantiles (Lee et al. 2024), as diffusers' use_beta_sigmas
            import scipy.stats

            ppf = np.array([scipy.stats.beta.ppf(u, 0.6, 0.6) for u in 1 - np.linspace(0, 1, m)])
            out = lo + ppf * (hi - lo)
    return out


def _flow_match(schedule: NoiseSchedule, n: int, **options) -> torch.Tensor:
    """The evaluation times of the flow levels. A last level of exactly 0 — base sigmas passed with their end point,
    as ComfyUI writes them, which every shift keeps at 0 — is the grid's end point rather than an evaluation, so the
    grid then has one time fewer than it was given levels (FlowMatch Euler lists that 0 as a timestep too: its step
    there has length 0, which :class:`unisde.UnifiedScheduler` adds back as a no-op evaluation). UniPC's and
    DPM-Solver's flow levels take no 0 (their log-SNR steps would divide by it)."""
    tau = flow_sigmas(n, **options)
    if options.get("levels", "flowmatch") == "flowmatch" and len(tau) > 1 and float(tau[-1]) == 0.0:
        tau = tau[:-1]
    if not torch.isfinite(tau).all() or (tau <= 0).any() or (tau > 1).any():
        raise ValueError(
            f"flow grid: noise levels must lie in (0, 1] (a 0 only as the last of the sigmas passed to "
            f"set_timesteps, the end point), got {flow_sigmas(n, **options).tolist()[:8]}"
        )
    return t_from_flow_sigma(schedule, tau)


FLOW_MATCH = Grid(
    "flow_match",
    _flow_match,
    {
        "num_train_timesteps": Option(1000, (int,), "training table length N (σ_min = shifted 1/N)", positive),
        "shift": Option(1.0, (float,), "static shift t ↦ shift·t/(1 + (shift − 1)t)", positive),
        "use_dynamic_shifting": Option(False, (bool,), "shift by mu (set_timesteps(mu=...)) instead of shift"),
        "mu": Option(None, (float, type(None)), "dynamic shift μ (Flux: from the image sequence length)"),
        "time_shift_type": Option("exponential", (str,), "dynamic shift form", choices=("exponential", "linear")),
        "shift_terminal": Option(None, (float, type(None)), "stretch so that the last level is this value", _open_unit),
        "spacing": Option("linear", (str,), "respacing of the shifted levels", choices=SPACINGS),
        "base_sigmas": Option(
            None, (list, tuple, type(None)), "base flow levels (pipelines' sigmas) instead of a linspace", _sigmas_list
        ),
        "levels": Option(
            "flowmatch",
            (str,),
            "whose base levels: FlowMatch Euler's (float32), UniPC's or DPM-Solver "
            "multistep's use_flow_sigmas levels (float64)",
            choices=LEVELS,
        ),
    },
    "diffusers' FlowMatch grid: shift / dynamic shift (mu) / shift_terminal / Karras, exponential, beta σ",
)


@hookimpl
def unisde_register_grids(register):
    register(FLOW_MATCH)

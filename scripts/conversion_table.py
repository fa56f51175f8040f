"""Write docs/conversions.md: every scheduler class diffusers exports → the unisde sampler its default config
converts to, with the parity measured here (same model function, same start, same generator), or the reason it
is refused. Run: python scripts/conversion_table.py [--out docs/conversions.md]."""

from __future__ import annotations

import argparse
import inspect
import warnings

import diffusers
import diffusers.schedulers
import torch

from unisde.plugins import list_converters
from unisde.scheduler import UnifiedScheduler

STEPS = 8
SPECIAL_LOOPS = {"ScoreSdeVeScheduler": "its pipeline's predictor-corrector loop (tests/test_scheduler_parity.py)"}


def model(x, t):
    t = torch.as_tensor(t, dtype=x.dtype).reshape(-1)[0]
    return 0.6 * x + 0.05 * torch.sin(3 * x + t / 1000.0)


def run(sched, x, call):
    sched.set_timesteps(STEPS, **call)
    x = x * getattr(sched, "init_noise_sigma", 1.0)
    extra = (
        {"generator": torch.Generator().manual_seed(0)}
        if "generator" in inspect.signature(sched.step).parameters
        else {}
    )
    scale_input = getattr(sched, "scale_model_input", lambda x, t: x)
    for t in sched.timesteps:
        x = sched.step(model(scale_input(x, t), t), t, x, **extra).prev_sample
    return x


def _own_loop_cogvideox_dpm(sched, x):
    """CogVideoXDPMScheduler's own step signature (old x̂0 and the previous timestep), as CogVideoX pipelines call it."""
    g, old = torch.Generator().manual_seed(0), None
    for i, t in enumerate(sched.timesteps):
        back = sched.timesteps[i - 1] if i > 0 else None
        x, old = sched.step(model(x, t), old, t, back, x, generator=g, return_dict=False)
    return x


def _own_loop_unclip(sched, x):
    """UnCLIP's pipelines pass prev_timestep = the next timestep (None at the last)."""
    g, ts = torch.Generator().manual_seed(0), sched.timesteps
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else None
        x = sched.step(model(x, t), t, x, prev_timestep=prev, generator=g).prev_sample
    return x


def _own_loop_wuerstchen(sched, x):
    """Stable Cascade's loop: the timesteps without the last (t = 0), t fed as a batch."""
    g = torch.Generator().manual_seed(0)
    for t in sched.timesteps[:-1]:
        x = sched.step(model(x, t), t.expand(x.shape[0]), x, generator=g).prev_sample
    return x


def _own_loop_score_sde_vp(sched, x):
    """ScoreSdeVpScheduler has no step(): step_pred(score, x, t, generator) → (x, x_mean), in float64 (its float32
    σ(ε) = √(1 − e^{−1e−4}) carries 1e-3 relative error at sampling_eps = 1e-3)."""
    g = torch.Generator().manual_seed(0)
    sched.timesteps = sched.timesteps.double()
    for t in sched.timesteps:
        x, _ = sched.step_pred(model(x, t), x, t, generator=g)
    return x


# classes whose reference loop is not the plain `for t in timesteps: step(model(x, t), t, x)`: (loop, dtype, note)
OWN_LOOPS = {
    "CogVideoXDPMScheduler": (_own_loop_cogvideox_dpm, torch.float32, ""),
    "UnCLIPScheduler": (
        _own_loop_unclip,
        torch.float32,
        "; with clipping its float32 α = 1 − β of the first step moves √α by 2e-5 (tests/test_converters_remaining.py)",
    ),
    "DDPMWuerstchenScheduler": (_own_loop_wuerstchen, torch.float32, ""),
    "ScoreSdeVpScheduler": (_own_loop_score_sde_vp, torch.float64, ", float64"),
}


def row(name: str) -> tuple[str, str, str]:
    try:
        ref = getattr(diffusers.schedulers, name)()
    except Exception as exc:  # noqa: BLE001 - classes whose __init__ needs arguments have no default config
        return name, "—", f"not constructible with defaults ({type(exc).__name__})"
    if "noise_sampler_seed" in ref.config:  # DPMSolverSDE seeds its Brownian path from the global RNG by default
        ref = type(ref)(noise_sampler_seed=0)  # (two diffusers runs differ): pin it; unisde reads it by name
    try:
        uni = UnifiedScheduler.from_config(ref.config)
    except ValueError as exc:
        return name, "refused", str(exc).replace("|", "\\|")
    sampler = uni.config.sampler + (f" {dict(uni.sampler_options)}" if uni.sampler_options else "")
    if name in SPECIAL_LOOPS:
        return name, sampler, f"parity tested through {SPECIAL_LOOPS[name]}"
    call = {"mu": 0.8} if ref.config.get("use_dynamic_shifting") else {}
    own_loop, dtype, note = OWN_LOOPS.get(name, (None, torch.float32, ""))
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=dtype)
    if own_loop is not None:
        ref.set_timesteps(STEPS)
        expected = own_loop(ref, x.clone())
    else:
        expected = run(ref, x.clone(), call)
    got = run(uni, x.clone(), call)
    err = float((got - expected).abs().max() / expected.abs().max())
    return name, sampler, f"max|Δ| = {err:.1e} × scale ({STEPS} steps, default config{note})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="docs/conversions.md")
    args = parser.parse_args(argv)
    names = sorted(n for n in dir(diffusers.schedulers) if n.endswith("Scheduler"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = [row(n) for n in names]
    lines = [
        "# diffusers scheduler → unisde",
        "",
        "Generated by `python scripts/conversion_table.py` from the converter registry "
        f"({len(list_converters())} converters) and a live run of each class against its conversion. "
        "`UnifiedScheduler.from_config(config)` converts a class to the sampler listed, or refuses with the "
        "reason shown; `from_config(config, sampler=...)` runs any unisde sampler on the schedule of every "
        "class whose schedule unisde reads. Flags a converter does not honour are refused by name "
        "(see `tests/test_converters.py`).",
        "",
        "| diffusers class | unisde sampler | parity or reason |",
        "|---|---|---|",
    ]
    for name, sampler, note in rows:
        registered = " (no converter)" if name not in list_converters() else ""
        lines.append(f"| `{name}`{registered} | {sampler} | {note} |")
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(
        f"wrote {args.out}: {sum(r[1] not in ('refused', '—') for r in rows)} convert, "
        f"{sum(r[1] == 'refused' for r in rows)} refused"
    )


if __name__ == "__main__":
    main()

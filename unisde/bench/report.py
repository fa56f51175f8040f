r"""The report: ``BENCHMARKS.md`` (:func:`render_markdown`) and its figure (:func:`plot_accuracy`) from the results
of :func:`unisde.bench.run_benchmarks`."""

from __future__ import annotations

import math
import os

# The targets the issue sets (measured in the same run, reported in BENCHMARKS.md).
OVERHEAD_TARGET = 0.8  # unisde/diffusers step() time (FlowMatch Euler: unisde.bench.speed.OVERHEAD_TARGETS)
PIPELINE_TARGET = 1.0
TRAINING_TARGET = 1.0  # samples/s of unisde's training step over the diffusers-example loop's (the issue's ≥ 1.0)


METRIC_NAMES = {
    "w2": "exact W₂ to the data law",
    "trajectory": "trajectory RMS error vs converged PF-ODE",
    "sliced-w2": "sliced W₂ to exact samples",
    "frechet": "Fréchet distance to the real digits",
}
SAMPLING_METRICS = ("sliced-w2", "frechet")  # metrics with sampling noise (unisde.bench.accuracy.SAMPLING_METRICS)


def checkpoint_fit_text(fit: dict) -> str:
    """The checkpoints' optimised-grid fit in words, from the setup's ``checkpoints.optimized_grids``: one
    FitSettings' fields, or a mapping of them by checkpoint name."""
    from unisde.bench.optimized import budgets_text, label, weights_text

    if "samplers" in fit:  # one for every checkpoint
        fit = {"each checkpoint": fit}
    parts = []
    for name, settings in fit.items():
        samplers = ", ".join(label(entry[0], dict(entry[1])) + budgets_text(entry) for entry in settings["samplers"])
        parts.append(
            f"{name}: {samplers} at NFE ≤ {settings['max_nfe']}, {settings['calibration']} calibration starts, "
            f"{settings['candidates']} candidate times"
            + (
                f", descents from the {settings['descents_64d']} best of the DP path, the default grid and the "
                f"{', '.join(settings['starts'])} grids"
                if settings.get("starts")
                else ""
            )
            + f", the network in {settings.get('network_dtype', 'float64')}, "
            f"the PF-ODE reference to a relative {settings['reference_rtol']:g}" + weights_text(settings)
        )
    return "; ".join(parts)


def _primary(records: list) -> dict:
    """{(schedule, target): the metric that carries the comparison}: the noise-free one (w2 or trajectory) when any
    record has it, else sliced-w2."""
    out: dict = {}
    for r in records:
        key, metric = (r["schedule"], r["target"]), r.get("metric", "sliced-w2")
        if metric not in SAMPLING_METRICS:
            out[key] = metric
        else:
            out.setdefault(key, metric)
    return out


def best_by_library(records: list) -> dict:
    """{(schedule, target, nfe, library): best record} on each (schedule, target)'s primary metric."""
    primary = _primary(records)
    best: dict = {}
    for r in records:
        if r.get("metric", "sliced-w2") != primary[(r["schedule"], r["target"])]:
            continue
        key = (r["schedule"], r["target"], r["nfe"], r["library"])
        if key not in best or r["distance"] < best[key]["distance"]:
            best[key] = r
    return best


TWIN_RTOL = 1e-3
"""Twins (the same algorithm converted from a diffusers config, or run as a k-diffusion function is) agree on an
exact metric when their values differ by at most this fraction (diffusers keeps σ tables and some arithmetic in
float32; k-diffusion pairs agree to float64 rounding)."""


def agreement_rows(records: list) -> list:
    """Pairs (unisde twin, peer: a diffusers scheduler or a k-diffusion function) on the same schedule, target, NFE
    and metric. They agree when |Δ| ≤ TWIN_RTOL × the larger value (exact metrics) or |Δ| ≤ the noise floor
    (sampling metric)."""
    peers = {
        (r["schedule"], r["target"], r["nfe"], r["sampler"], r.get("metric")): r
        for r in records
        if r["library"] != "unisde"
    }
    rows = []
    for r in records:
        if r.get("twin_of"):
            p = peers.get((r["schedule"], r["target"], r["nfe"], r["twin_of"], r.get("metric")))
            if p is not None:
                diff = abs(r["distance"] - p["distance"])
                exact = r.get("exact", False)
                tol = TWIN_RTOL * max(r["distance"], p["distance"]) if exact else r["floor"]
                rows.append(
                    {
                        "schedule": r["schedule"],
                        "target": r["target"],
                        "nfe": r["nfe"],
                        "library": p["library"],
                        "peer_sampler": p["sampler"],
                        "metric": r.get("metric", "sliced-w2"),
                        "unisde": r["distance"],
                        "peer": p["distance"],
                        "diff": diff,
                        "floor": r["floor"],
                        "tolerance": tol,
                        "agree": diff <= tol,
                        "reason": "" if diff <= tol else _disagreement_reason(p, r, tol),
                    }
                )
    return rows


def _disagreement_reason(peer: dict, twin: dict, tolerance: float) -> str:
    """Why a twin pair disagrees by ``tolerance`` or more, where the records measured it ('' otherwise): the peer's
    float32 σ̃_down table, or a median start on which the two agree far within the tolerance (a few starts then
    carry the difference)."""
    table_error = peer.get("ancestral_table_error")
    if table_error is not None and table_error > TWIN_RTOL / 10:
        return (
            f"diffusers' float32 σ̃_down = √(σ̃²_next − σ̃²_up) is off by {table_error:.1%} here (cancellation, "
            "measured against the same table in float64); the twin computes σ̃_down without it"
        )
    apart = twin.get("output_difference")
    if apart is not None and apart["median"] <= tolerance / 10:
        return (
            f"the median start's outputs differ by {apart['median']:.1e} (a tenth of the tolerance is "
            f"{tolerance / 10:.1e}) and the largest of the {apart['starts']} by {apart['max']:.1e}: a few starts "
            "near a boundary between modes amplify a difference of the peer's float32 arithmetic"
        )
    return ""


def _record_cell(r: dict | None) -> str:
    """A best-record cell: its value and contestant, and on a trained checkpoint its FD alongside."""
    from unisde.bench.accuracy import contestant_name

    if r is None:
        return "—"
    out = f"{_fmt(r['distance'])} ({contestant_name(r)}"
    if "frechet" in r and r.get("metric") != "frechet":
        out += f"; FD {_fmt(r['frechet'])}"
    return out + ")"


def _fmt(x: float | None) -> str:
    if x is None:
        return "—"
    return "inf" if not math.isfinite(x) else "0" if x == 0 else f"{x:.4f}" if x >= 1e-2 else f"{x:.2e}"


def plot_accuracy(results: dict, path: str) -> str | None:
    """Error vs NFE (log-log) per schedule × target on its primary metric: every contestant faint, each library's
    best bold (the sampling floor dashed where the metric is sampled). Returns the path written (None without
    accuracy records)."""
    records = results.get("accuracy") or []
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = _primary(records)
    panels = sorted(primary)
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    colors = {"unisde": "tab:blue", "diffusers": "tab:orange", "k-diffusion": "tab:green"}
    best = best_by_library(records)
    for ax, (schedule, target) in zip(axes.flat, panels):
        metric = primary[(schedule, target)]
        mine = [
            r
            for r in records
            if r["schedule"] == schedule
            and r["target"] == target
            and r.get("metric", "sliced-w2") == metric
            and math.isfinite(r["distance"])
            and r["distance"] > 0
        ]
        for lib, label in sorted({(r["library"], r["sampler"]) for r in mine}):
            pts = sorted((r["nfe"], r["distance"]) for r in mine if r["library"] == lib and r["sampler"] == label)
            ax.plot(*zip(*pts), color=colors.get(lib, "gray"), alpha=0.15, lw=0.8)
        for lib in sorted({r["library"] for r in mine}):
            pts = sorted(
                (k[2], v["distance"])
                for k, v in best.items()
                if k[0] == schedule and k[1] == target and k[3] == lib and v["distance"] > 0
            )
            if pts:
                ax.plot(*zip(*pts), color=colors.get(lib, "gray"), lw=2.2, marker="o", label=f"best {lib}")
        if metric in SAMPLING_METRICS and mine:
            ax.axhline(mine[0]["floor"], color="k", ls="--", lw=1, label="noise floor")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{target} · {schedule}")
        ax.set_xlabel("NFE (model calls)")
        ax.set_ylabel(METRIC_NAMES.get(metric, metric), fontsize=8)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy_markdown(results: dict, plot_relpath: str | None) -> list[str]:
    from unisde.bench.accuracy import AFFINE_TOL, comparisons, contestant_name
    from unisde.bench.optimized import markdown_lines as optimized_markdown

    setup = results.get("setup", {})
    ckpt_fit = (setup.get("checkpoints") or {}).get("optimized_grids")
    records = results.get("accuracy") or []
    lines = [
        "## 1. Accuracy per model evaluation",
        "",
        "Every contestant samples the same **exact** model (the analytic denoiser of `unisde.analytic`, as an "
        "ε-model on diffusers' default DDPM table — `ddpm` — or as the EDM-preconditioned model on "
        "EDMEulerScheduler's σ range — `edm` — or as the schedule's own model for other schedules), in float64, "
        "from the same standard normal starts, x̂0 clipping off for all. The error is measured without sampling "
        "noise wherever the mathematics allows (method: `unisde/bench/exact.py`):",
        "",
        "* **w2** (Gaussian targets, deterministic *and* stochastic contestants): the sampler on the exact model of "
        "Gaussian data is an affine map of its start and noise draws, so its output law is exactly N(b, A Aᵀ); b and "
        "A are read off one batched float64 run (zero start, d unit starts, one unit vector per noise coordinate "
        "that reaches the output — the draws are prescribed through unisde's `noise_sampler` hook and, for diffusers "
        "schedulers, their module's `randn_tensor`), checked at a random (start, noise) to rounding "
        f"(relative residual ≤ {AFFINE_TOL:g}, else the sampling metric is used and the row says so). Reported: the "
        "closed-form W₂ to the data law (whole vector, data units) and KL; *prior floor*: the W₂ of an exact "
        "PF-ODE solve from the same start law (the cost of starting at t < 1 or from N(0, (s²+σ²) I)).",
        "* **trajectory** (other targets, deterministic contestants): RMS over a fixed batch of ‖x_out − x_ref‖, "
        "x_ref the same PF-ODE solved from the same start (the sample and time of the contestant's first model "
        "call) by adaptive float64 Dormand–Prince at rtol = atol = the table's tolerance; its *floor* is the RMS "
        "difference to a solve at a 100× looser one (an upper bound on the reference's own error). A contestant "
        "whose first call comes after the schedule's first time (t = 1: leading spacing, k-diffusion's σ̃ capped at "
        "4096 on the rectified flow, diffusers' flow σ's from 1 − 1/N) is scored against the solve from t = 1 with "
        "the same standard normal starts, so a late start pays what it costs instead of being scored on a shorter "
        "path.",
        "* **sliced-w2** (stochastic contestants on mixtures; runs that are not affine): sliced W₂ between n "
        "generated and n exact samples, against the noise floor of two independent exact sets (mean ± sd of three); "
        f"directions: {setup.get('projections', '?')} fixed random ones on the 64-D targets, "
        f"{setup.get('projections_2d', setup.get('projections', '?'))} evenly spaced angles on the 2-D one (a "
        "trapezoid rule on a periodic integrand: 64 angles are within 1e-5, relative, of the integral over all "
        "directions, far below the sampling noise).",
        "* **trained checkpoints** (`digits-vp`, `digits-flow`: the two bundled digits UNets, each raced on the "
        "schedule it was trained with): no closed form, so the ground truth is the network's own probability-flow "
        "ODE. A deterministic contestant is measured by the **trajectory** error of a fixed batch of starts against "
        "that ODE solved from the same starts (the solve in float64, the network too — its sinusoidal time embedding "
        "as well; adaptive Dormand–Prince in the network's own time t, *floor*: the RMS difference to a looser "
        "solve, tolerances in the targets table); the contestants' network runs in the dtype the targets table "
        "names (float32: 4–6× faster per sample, so the batch can hold more starts — on 4, a few starts that change "
        "mode swung digits-flow's NFE 4 ratio from 0.74 (16 starts) to 0.67), and what that moves a score by is "
        "measured there: "
        "the best unisde record at the largest NFE rerun with the float64 network. The **Fréchet distance** (FD: "
        "Gaussian fits, ‖μ − μ′‖² + tr(C + C′ − 2(C C′)^½), squared pixel units, as `unisde demo` reports it) of a "
        "larger fixed batch, clipped to [−1, 1], to the 1797 real digits in 64-d pixel space is shown alongside for "
        "the records the comparison table names (the best unisde and the best peer at each NFE, rerun on that batch), "
        "and is the metric of stochastic contestants, against its floor (n real digits against the other 1797 − n, "
        "mean ± sd of three splits). The batch sizes, the NFE of the twins and of the stochastic contestants are in "
        "the targets table; they are set by cost (a float64 call of the UNet costs ~2 ms per sample on one core, and "
        "a reference start ~1700 calls), which also keeps the optimised grids on the checkpoints to a reduced fit "
        "(`BenchConfig.checkpoint_fit`: " + (checkpoint_fit_text(ckpt_fit) if ckpt_fit else "off in this run") + ").",
        "",
        "NFE counts every model call (the model counts them); each contestant runs the largest `num_inference_steps` "
        "whose calls fit the budget.",
        "",
        f"unisde samplers: {', '.join(setup.get('samplers', []))} (every registered sampler, plugins included"
        + ("; each also on other time grids" if setup.get("grid_variants") else "")
        + (
            f" — on the mixtures a stochastic sampler's other grids up to NFE {setup['sampled_variants_max_nfe']}: "
            "beyond it their sampling metric reads the noise floor, not the grid"
            if setup.get("grid_variants") and setup.get("sampled_variants_max_nfe")
            else ""
        )
        + "). "
        "`≡X` is the unisde scheduler converted from diffusers scheduler X (`UnifiedScheduler.from_config(X.config)`, "
        "the same algorithm). diffusers: every scheduler of the target's family"
        + (
            " on its own spacings (leading, trailing, linspace) and σ options (Karras, exponential, beta) where "
            "the class has them."
            if setup.get("grid_variants")
            else " on its default spacing."
        ),
        "",
        (
            "k-diffusion: its deterministic samplers run through its own functions (`sample_euler`, `sample_heun`, "
            "`sample_dpm_2`, `sample_lms`, `sample_dpmpp_2m`, and `sample_dpm_fast` at the NFE itself) on its own σ̃ "
            "grids (`get_sigmas_karras`"
            + (
                ", `get_sigmas_exponential`, `get_sigmas_polyexponential` with ρ = 2"
                if setup.get("grid_variants")
                else ""
            )
            + ") over the schedule's σ̃ range, with the exact denoiser in the VE view D(x̃; σ̃) (evaluated at "
            "x = s(t) x̃, t = t(σ̃)) as the model, from x̃ = σ̃_max z, in float64; model calls are counted per run. On "
            "the rectified flow (s(1) = 0, σ̃(1) = ∞) the grid starts at σ̃ = 4096 (SNR 2⁻²⁴, unisde's VE-view cap), "
            "as a k-diffusion user must start at a finite σ̃; `sample_dpm_fast` ends at σ̃_min > 0. `≡sample_X[grid]` "
            "is the unisde sampler of the same algorithm on unisde's grid of that name, run the same way."
            if setup.get("k_diffusion")
            else "k-diffusion: not installed (`import k_diffusion` fails), so its samplers are skipped; "
            "it is an optional peer (`pip install 'unisde[bench]'`)."
        ),
        "",
    ]
    if plot_relpath:
        lines += [f"![error vs NFE]({plot_relpath})", ""]
    floors = results.get("floors", [])
    if floors:
        lines += ["| target | kind | metric | NFE budgets | grid variants | details |", "|---|---|---|---|---|---|"]
        for f in floors:
            detail = []
            if f.get("kind") == "checkpoint":
                twins, stoch = f.get("twin_nfe"), f.get("stochastic_nfe")
                detail.append(
                    f"{f.get('model', 'trained checkpoint')}; on schedule `{f.get('schedule', '?')}` only"
                    + (f", every contestant with `timestep_spacing={f['spacing']}`" if f.get("spacing") else "")
                    + f". Trajectory batch: {f.get('n_trajectory')} starts, the network in "
                    f"{f.get('race_dtype', 'float64')}"
                    + (
                        f" (the float64 network moves {r['sampler']} at NFE {r['nfe']} by {_fmt(r['rms'])} RMS, "
                        f"{r['relative']:.1%} of its error)"
                        if (r := f.get("race_rounding"))
                        else ""
                    )
                    + ", against the network's float64 PF-ODE at "
                    f"rtol {f.get('reference_rtol', 0):g} (checked at {f.get('reference_check_rtol', 0):g}: largest "
                    f"reference error {_fmt(f.get('reference_max_error'))}; {f.get('reference_solves', 0)} solves). "
                    f"FD batch: {f['n']} starts ({f.get('frechet_dtype', 'float64')} network), floor "
                    f"{_fmt(f.get('floor'))} ± {_fmt(f.get('floor_sd'))}; FD of the compared records"
                    + (f", and of stochastic contestants at NFE {', '.join(map(str, stoch))} only" if stoch else "")
                    + (f"; unisde twins at NFE {', '.join(map(str, twins))} only" if twins else "")
                    + "; "
                    + ("optimised grids raced" if f.get("optimized_grids") else "no optimised grids")
                    + f"; {f.get('seconds', 0):.0f} s (one core)"
                )
                lines.append(
                    f"| {f['target']} | checkpoint | trajectory (FD alongside) | "
                    f"{', '.join(map(str, f.get('nfe', [])))} | {'yes' if f.get('grid_variants') else 'no'} | "
                    f"{'; '.join(detail)} |"
                )
                continue
            if f.get("n_trajectory"):
                detail.append(
                    f"trajectory batch {f['n_trajectory']}, reference rtol {f.get('reference_rtol', 0):g} "
                    f"(checked at {f.get('reference_check_rtol', 0):g}; {f.get('reference_solves', 0)} solves)"
                )
            if f.get("floor"):
                detail.append(f"sampling metric: n = {f['n']}, floor {_fmt(f['floor'])} ± {_fmt(f['floor_sd'])}")
            lines.append(
                f"| {f['target']} | {f.get('kind', '?')} | {f.get('metric', 'sliced-w2')} | "
                f"{', '.join(map(str, f.get('nfe', [])))} | {'yes' if f.get('grid_variants') else 'no'} | "
                f"{'; '.join(detail) or '—'} |"
            )
        lines.append("")
    rows = comparisons(records)
    primary_rows = [r for r in rows if r["primary"]]
    if primary_rows:
        met = sum(bool(r["met"]) for r in primary_rows)
        lines += [
            "### Best unisde vs best peer (the issue's targets)",
            "",
            "Target: best unisde ≤ 0.67 × best peer (diffusers"
            + (" or k-diffusion" if setup.get("k_diffusion") else "")
            + ") at NFE ≤ 10, ≤ 1.0 × at NFE 20 and 50, on the target's "
            "noise-free metric (w2 or trajectory). A target not met is shown as **not met** with the reason.",
            "",
            f"Met in {met} of {len(primary_rows)} cells.",
            "",
            "On Gaussian targets the last column repeats the comparison on the discretisation error alone "
            "(W₂ to the exact PF-ODE solve from each contestant's own start law, among the contestants that "
            "start from the least mismatched start law), which the prior floor does not blur at high NFE. On the "
            "trained checkpoints each record also shows its Fréchet distance to the real digits (FD; its floor is in "
            "the targets table).",
            "",
            "| schedule | target | metric | NFE | best unisde | best peer | ratio | target | verdict | "
            "discretisation error only: unisde / peer (ratio) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in primary_rows:
            u, p = r["unisde"], r["peer"]
            verdict = (
                ("met" + (f" ({r['reason']})" if r["reason"] else "")) if r["met"] else f"**not met**: {r['reason']}"
            )
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
            sv = r.get("solver")
            solver = (
                (
                    f"{_fmt(sv['unisde']['w2_solver'])} ({sv['unisde']['sampler']}) / "
                    f"{_fmt(sv['peer']['w2_solver'])} "
                    f"({contestant_name(sv['peer'])}) ({sv['ratio']:.3f})"
                )
                if sv
                else "—"
            )
            lines.append(
                f"| {r['schedule']} | {r['target']} | {r['metric']} | {r['nfe']} | {_record_cell(u)} | "
                f"{_record_cell(p)} | {ratio} | ≤ {r['target_ratio']} | {verdict} | {solver} |"
            )
        lines.append("")
    info_rows = [r for r in rows if not r["primary"]]
    if info_rows:
        lines += [
            "### Stochastic contestants on the sampling metric",
            "",
            "Best unisde vs best peer among contestants measured by sliced W₂ (no exact law: stochastic "
            "samplers on mixtures, non-affine runs) or, on the trained checkpoints, by the Fréchet distance to the "
            "real digits (stochastic samplers). Differences within twice the floor's sd are sampling noise.",
            "",
            "| schedule | target | NFE | best unisde | best peer | ratio | floor (± sd) | note |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in info_rows:
            u, p = r["unisde"], r["peer"]
            ref = u or p
            ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
            lines.append(
                f"| {r['schedule']} | {r['target']} | {r['nfe']} | "
                f"{_fmt(u['distance']) + ' (' + u['sampler'] + ')' if u else '—'} | "
                f"{_fmt(p['distance']) + ' (' + contestant_name(p) + ')' if p else '—'} | {ratio} | "
                f"{_fmt(ref['floor'])} ± {_fmt(ref.get('floor_sd'))} | {r['reason']} |"
            )
        lines.append("")
    agree = agreement_rows(records)
    if agree:
        n_ok = sum(r["agree"] for r in agree)
        lines += [
            "### Same algorithm, same answer",
            "",
            f"A unisde twin and its peer (a diffusers scheduler or a k-diffusion function) agree when |Δ| ≤ "
            f"{TWIN_RTOL:g} × the larger value (exact metrics) or ≤ the noise floor (sampling metric).",
            "",
            f"{n_ok} of {len(agree)} pairs agree"
            + (
                f"; {explained} of the others disagree by the peer's own float32 rounding, measured (the row says "
                "where)."
                if (explained := sum(bool(r["reason"]) for r in agree))
                else "."
            ),
            "",
            "| schedule | target | metric | NFE | library | peer | peer's value | unisde twin | abs Δ | tolerance "
            "| agree |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(agree, key=lambda r: (r["schedule"], r["target"], r["library"], r["peer_sampler"], r["nfe"])):
            verdict = "yes" if r["agree"] else "**no**" + (f": {r['reason']}" if r["reason"] else "")
            lines.append(
                f"| {r['schedule']} | {r['target']} | {r['metric']} | {r['nfe']} | {r['library']} | "
                f"{r['peer_sampler']} | "
                f"{_fmt(r['peer'])} | "
                f"{_fmt(r['unisde'])} | {r['diff']:.1e} | {r['tolerance']:.1e} | {verdict} |"
            )
        lines.append("")
    lines += optimized_markdown(results)
    lines += ["### Every contestant", ""]
    budgets = {f["target"]: f.get("nfe") for f in floors}
    for schedule, target in sorted({(r["schedule"], r["target"]) for r in records}):
        mine = [r for r in records if r["schedule"] == schedule and r["target"] == target]
        nfes = sorted(budgets.get(target) or {r["nfe"] for r in mine})
        trained = any(f["target"] == target and f.get("kind") == "checkpoint" for f in floors)
        lines += [
            f"**{target} · {schedule}** (value of the row's metric; *italic*: stochastic; — = the sampler's "
            "smallest run exceeds the budget"
            + (
                ", or not raced there: twins and stochastic contestants run at the NFE of the targets table, and the "
                "FD alongside is measured for the compared records"
                if trained
                else ""
            )
            + "; prior floor / reference error in the last column)",
            "",
            "| library | sampler | metric | " + " | ".join(f"NFE {n}" for n in nfes) + " | floor |",
            "|---|---|---|" + "---|" * len(nfes) + "---|",
        ]
        table: dict = {}
        for r in mine:
            table.setdefault((r["library"], r["sampler"], r.get("metric", "sliced-w2")), {})[r["nfe"]] = r
            if "frechet" in r and r.get("metric") != "frechet":  # a checkpoint's FD, alongside the trajectory error
                fd = {"distance": r["frechet"], "floor": r["frechet_floor"], "stochastic": False}
                table.setdefault((r["library"], r["sampler"], "frechet (alongside)"), {})[r["nfe"]] = fd
        for (lib, label, metric), row in sorted(
            table.items(), key=lambda kv: (kv[0][0] != "unisde", kv[0][1], kv[0][2])
        ):
            cells = []
            for n in nfes:
                if n not in row:
                    cells.append("—")
                    continue
                v = _fmt(row[n]["distance"])
                cells.append(f"*{v}*" if row[n].get("stochastic") else v)
            floor = min(r["floor"] for r in row.values())
            lines.append(f"| {lib} | {label} | {metric} | " + " | ".join(cells) + f" | {_fmt(floor)} |")
        lines.append("")
    notes: dict = {}
    for r in records:
        if r.get("note"):
            notes.setdefault((r["library"], r["sampler"], r["schedule"], r["target"]), r["note"])
    if notes:
        lines += [
            "### Contestants on the sampling metric where a noise-free one was expected",
            "",
            "| library | sampler | schedule | target | why (first NFE) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {lib} | {label} | {schedule} | {target} | {note} |"
            for (lib, label, schedule, target), note in sorted(notes.items())
        ]
        lines.append("")
    errors = results.get("errors") or []
    if errors:
        lines += ["### Runs that failed", "", "| library | sampler | schedule | error |", "|---|---|---|---|"]
        seen = set()
        for e in errors:
            key = (e["library"], e["sampler"], e["schedule"], e["error"])
            if key not in seen:
                seen.add(key)
                lines.append(f"| {e['library']} | {e['sampler']} | {e['schedule']} | {e['error'].replace('|', '/')} |")
        lines.append("")
    return lines


def render_markdown(results: dict, plot_relpath: str | None = None, command: str = "unisde bench") -> str:
    """BENCHMARKS.md from the results of :func:`run_benchmarks`."""
    setup = results.get("setup", {})
    lines = [
        "# unisde benchmarks",
        "",
        f"Generated by `{command}` in {results.get('seconds', 0.0):.0f} s on {setup.get('machine', '?')} "
        f"(torch {setup.get('torch', '?')}, diffusers {setup.get('diffusers', '?')}"
        + (f", k-diffusion {setup['k_diffusion_version']}" if setup.get("k_diffusion_version") else "")
        + f", Python {setup.get('python', '?')})"
        + (" — **quick** preset; run `unisde bench` for the full benchmark." if setup.get("quick") else ".")
        + (
            f" The accuracy section ran in {setup['workers']} single-threaded worker processes."
            if setup.get("workers", 1) > 1
            else ""
        ),
        "Regenerate with `unisde bench [--quick] [--json results.json]`; the method is documented in "
        "`unisde/bench/__init__.py`.",
        "",
    ]
    if results.get("accuracy"):
        lines += _accuracy_markdown(results, plot_relpath)
    overhead = results.get("overhead") or []
    if overhead:
        shapes = ", ".join("×".join(map(str, s)) for s in setup.get("overhead_shapes", []))
        met = sum(bool(r["met"]) for r in overhead)
        lines += [
            "## 2. Scheduler overhead (`step()` alone)",
            "",
            "Every diffusers scheduler against its unisde twin (`UnifiedScheduler.from_config(scheduler.config)`, "
            f"the same algorithm), float32 sample and fixed model output of each size ({shapes}). The two walk "
            f"sampling loops of {overhead[0]['steps']} inference steps in lockstep, call by call, the order "
            "alternating, each `step()` timed alone; a warm-up loop is dropped, then per call index the median over "
            "loops, summed over the loop: the mean time of one call. torch single-threaded (see "
            "`unisde/bench/__init__.py`). The C heap during the speed sections: "
            f"{setup.get('heap') or 'as the process found it'}"
            " (`unisde.bench.speed.steady_heap`: with glibc's dynamic thresholds a step's freed temporaries may go "
            "back to the OS and fault in again at the next step, or not, depending on what the process did before; "
            "diffusers' TCD step at 1×4096×64 took 1.4 ms a call in one full run and 4.1 ms in the next). "
            "Target: ratio ≤ "
            f"{OVERHEAD_TARGET} (≤ 1.0 for FlowMatch Euler, whose own step is already one pass). Where a pair misses "
            "it the verdict says why, in numbers measured in the same run: the share of diffusers' step taken by the "
            "noise draws (a twin draws the very same numbers from the same generator, so they cost both sides alike) "
            "with the ratio net of them, or the ratio with unisde's per-step finiteness probe off "
            "(`check_finite=False`).",
            "",
            f"Met in {met} of {len(overhead)} (pair, size) cells.",
            "",
            "| algorithm | diffusers scheduler | unisde sampler | size | unisde (µs/call) | diffusers (µs/call) "
            "| ratio | target | met |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in overhead:
            target = r.get("target", OVERHEAD_TARGET)
            lines.append(
                f"| {r['sampler']} | {r['diffusers_scheduler']} | {r['unisde_sampler']} | "
                f"{'×'.join(map(str, r.get('shape', [])))} | {r['unisde_s'] * 1e6:.1f} | "
                f"{r['diffusers_s'] * 1e6:.1f} | {r['ratio']:.3f} | ≤ {target} | "
                f"{'yes' if r['ratio'] <= target else '**not met**' + (': ' + r['note'] if r.get('note') else '')} |"
            )
        lines.append("")
    memory = results.get("memory") or []
    if memory:
        met = sum(bool(r["met"]) for r in memory)
        lines += [
            "### Peak memory of one step",
            "",
            f"Sample size {'×'.join(map(str, memory[0]['shape']))} (float32), every call of a loop of "
            f"{setup.get('overhead_inference_steps', '?')} inference steps. *Peak*: the most bytes allocated during "
            "one `step()` and alive at once, from torch's profiler (`profile_memory=True`: every allocation and free "
            "of torch's CPU allocator, kernel workspaces included), the largest over the loop's calls. *History*: "
            "what the method keeps between calls, measured on diffusers' scheduler of the algorithm (the most tensor "
            "storages it holds after a call: its attributes, containers and Brownian-tree cache); *unisde holds*: the "
            "same count for the twin (its attributes and running loop, the returned sample excluded). All in units of "
            "the sample's size. Target: peak ≤ 3 + history.",
            "",
            f"Met for {met} of {len(memory)} pairs.",
            "",
            "| algorithm | unisde sampler | unisde peak | target | met | history | unisde holds | diffusers peak |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in memory:
            lines.append(
                f"| {r['sampler']} | {r['unisde_sampler']} | {r['unisde_peak']:.2f} | ≤ {r['target']:.2f} | "
                f"{'yes' if r['met'] else '**not met**'} | {r['history']:.2f} | {r['unisde_held']:.2f} | "
                f"{r['diffusers_peak']:.2f} |"
            )
        lines.append("")
    pipe = results.get("pipeline") or {}
    if pipe:
        reps = pipe.get("reps")
        spread = (
            f"{pipe['ratio_min']:.3f}–{pipe['ratio_max']:.3f} | {pipe['ratio_q1']:.3f}–{pipe['ratio_q3']:.3f}"
            if "ratio_min" in pipe
            else "— | —"
        )
        lines += [
            "## 3. Pipeline",
            "",
            f"DDPMPipeline, {pipe['num_inference_steps']} steps, batch {pipe['batch_size']}, {pipe['unet']}; "
            "UnifiedScheduler(sampler=ddpm) vs DDPMScheduler. Each repetition runs both pipelines back to back (the "
            "order alternating); the ratio is the median of the repetitions' ratios"
            + (f" ({reps} repetitions)" if reps else "")
            + ", with their spread; the times are medians.",
            "",
            f"| unisde (s) | diffusers (s) | ratio | min–max | IQR | target ≤ {PIPELINE_TARGET} |",
            "|---|---|---|---|---|---|",
            f"| {pipe['unisde_s']:.3f} | {pipe['diffusers_s']:.3f} | {pipe['ratio']:.3f} | {spread} | "
            f"{'yes' if pipe['ratio'] <= PIPELINE_TARGET else '**not met**'} |",
            "",
        ]
    train = results.get("training") or {}
    if train:
        lines += [
            "## 4. Training throughput",
            "",
            f"Batch {train['batch_size']} of 8×8 digits, {train['unet']}, AdamW with train_unconditional.py's "
            f"hyperparameters, {train['steps']} interleaved steps each, median. unisde: "
            "`unisde.training.make_train_step` (ε, uniform_index) with the optimiser unisde's training builds ("
            + (train.get("optimizers") or {}).get("unisde", "AdamW")
            + "); diffusers: the train_unconditional.py loop body with its `torch.optim.AdamW` (torch's default "
            "implementation, a Python loop over the parameters on the CPU). The model, data, loss and update rule "
            "are the same on both sides.",
            "",
            f"| unisde (samples/s) | diffusers loop (samples/s) | ratio | target ≥ {TRAINING_TARGET} |",
            "|---|---|---|---|",
            f"| {train['unisde_samples_per_s']:.1f} | {train['diffusers_samples_per_s']:.1f} | {train['ratio']:.3f} | "
            f"{'yes' if train['ratio'] >= TRAINING_TARGET else '**no**'} |",
            "",
        ]
    lines += [f"Total run time: {results.get('seconds', 0.0):.1f} s.", ""]
    return "\n".join(lines)

"""``unisde grid optimize``: the evaluation times that minimise a sampler's error at an NFE, for a pipeline folder.

Thin over :func:`unisde.grids.optimize.optimize_grid`: prints the grid and the error against a fine reference solve
before (the default grid at the same NFE) and after, on the calibration batch and on a held-out batch; ``--save``
stores the grid in the folder's scheduler config (``time_grid="optimized"``) and model card.
"""

from __future__ import annotations

import json
import os

help = "optimise time grids (GITS dynamic programming + coordinate descent) for a sampler and NFE"
description = (
    help + ". `unisde grid optimize PIPELINE --sampler S --nfe N` fits the grid on --calibration "
    "starts, scores it on --holdout other starts against an RK4 reference solve of the PF-ODE (checked "
    "by halving its step), prints both errors with those of the default grid, and with --save writes "
    "the grid into PIPELINE (scheduler config + README section, each file replaced atomically)."
)


def add_arguments(parser):
    sub = parser.add_subparsers(dest="grid_command", metavar="ACTION")
    sub.required = True
    p = sub.add_parser(
        "optimize",
        help="find the grid minimising the error against a reference solve",
        description=(__doc__ or "").strip().splitlines()[0],
    )
    p.add_argument("pipeline", help="pipeline folder (with model_index.json, a UNet and a scheduler)")
    p.add_argument("--sampler", required=True, help="a registered deterministic sampler (ddim, edm, ode, deis, …)")
    p.add_argument("--sampler_options", default=None, help="JSON dict of sampler options")
    p.add_argument("--nfe", type=int, required=True, help="model-evaluation budget")
    p.add_argument("--calibration", type=int, default=16, help="starts the grid is fitted on (default 16)")
    p.add_argument("--holdout", type=int, default=16, help="other starts the grid is scored on (default 16)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--candidates", type=int, default=100, help="candidate times of the DP lattice (default 100)")
    p.add_argument(
        "--reference_substeps",
        default="auto",
        help="RK4 steps of the reference per candidate interval: an integer, or auto (1, 2, 4, 8 until "
        "halving the step changes the solution by less than --reference_rtol; default)",
    )
    p.add_argument(
        "--reference_rtol",
        type=float,
        default=1e-2,
        help="halving test tolerance (relative RMS change of the reference end points; default 0.01)",
    )
    p.add_argument("--no_refine", action="store_true", help="dynamic programming only (no coordinate descent)")
    p.add_argument(
        "--fit_weights",
        action="store_true",
        help="then fit the weights of the multistep sampler 'fitted' on the grid (least squares), which the pipeline "
        "then samples with",
    )
    p.add_argument(
        "--weights_history", type=int, default=3, help="with --fit_weights: the most x̂0's a step weighs (default 3)"
    )
    p.add_argument(
        "--fit_corrector",
        action="store_true",
        help="with --fit_weights: fit a corrector with the weights (UniPC's free correction, fitted; no extra model "
        "call)",
    )
    p.add_argument(
        "--fit_evaluation_times",
        action="store_true",
        help="with --fit_weights: also fit the time each model evaluation is told (Time-Shift sampler's coupling, "
        "fitted), then the weights again for those times",
    )
    p.add_argument("--save", action="store_true", help="store the grid in PIPELINE (scheduler config + model card)")
    p.add_argument("--json", default=None, help="also write the result as JSON to this file")


def _validate(args) -> dict:
    from unisde.plugins import get_sampler

    options = {}
    if args.sampler_options is not None:
        try:
            options = json.loads(args.sampler_options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--sampler_options is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError(f"--sampler_options must be a JSON object, got {type(options).__name__}")
    get_sampler(args.sampler).validate_options(options)
    if args.reference_substeps != "auto":
        try:
            args.reference_substeps = int(args.reference_substeps)
        except ValueError:
            raise ValueError(
                f"--reference_substeps must be an integer or auto, got {args.reference_substeps!r}"
            ) from None
        if args.reference_substeps < 1:
            raise ValueError(f"--reference_substeps must be >= 1, got {args.reference_substeps}")
    if not 0.0 < args.reference_rtol < 1.0:
        raise ValueError(f"--reference_rtol must lie in (0, 1), got {args.reference_rtol}")
    if args.nfe < 1:
        raise ValueError(f"--nfe must be >= 1, got {args.nfe}")
    if args.weights_history < 1:
        raise ValueError(f"--weights_history must be >= 1, got {args.weights_history}")
    for flag in ("corrector", "evaluation_times"):
        if getattr(args, f"fit_{flag}") and not args.fit_weights:
            raise ValueError(f"--fit_{flag} fits the {flag.replace('_', ' ')} of the fitted weights: add --fit_weights")
    if args.calibration < 1:
        raise ValueError(f"--calibration must be >= 1 (the batch the grid is fitted on), got {args.calibration}")
    if args.holdout < 1:
        raise ValueError(f"--holdout must be >= 1 (the batch the grid is scored on), got {args.holdout}")
    if not os.path.isfile(os.path.join(args.pipeline, "model_index.json")):
        raise ValueError(f"{args.pipeline!r} is not a pipeline folder: it has no model_index.json")
    if args.save and not os.access(args.pipeline, os.W_OK):
        raise ValueError(f"--save: the folder {args.pipeline!r} is not writable")
    if args.json is not None and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise ValueError(f"--json {args.json!r}: its folder does not exist")
    return options


def run(args):
    from unisde.grids.optimize import optimize_grid

    options = _validate(args)  # every check before any weight is loaded
    result = optimize_grid(
        args.pipeline,
        sampler=args.sampler,
        sampler_options=options,
        nfe=args.nfe,
        calibration=args.calibration,
        holdout=args.holdout,
        seed=args.seed,
        candidates=args.candidates,
        reference_substeps=args.reference_substeps,
        reference_rtol=args.reference_rtol,
        refine=not args.no_refine,
        fit_weights=args.fit_weights,
        weights_history=args.weights_history,
        fit_corrector=args.fit_corrector,
        fit_evaluation_times=args.fit_evaluation_times,
        progress=True,
    )
    print(result.summary())
    if args.nfe != result.nfe:
        print(f"  (NFE {args.nfe} is not reachable with {args.sampler!r}; used {result.nfe})")
    if args.json is not None:
        with open(args.json, "w") as fh:
            json.dump(result.to_dict(), fh, indent=2)
    if args.save:
        result.save(args.pipeline)
        print(
            f"saved: {os.path.join(args.pipeline, 'scheduler', 'scheduler_config.json')} now samples with "
            f"{result.sampler!r} on time_grid='optimized' (call the pipeline with num_inference_steps="
            f"{result.steps}); the model card records the errors"
        )
    return 0

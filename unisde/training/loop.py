"""The training loop: a diffusers ``UNet2DModel`` trained with the denoising objective of any schedule ×
parameterisation, through 🤗 accelerate (one CPU, one GPU, many GPUs or nodes; mixed precision, gradient
accumulation, clipping, LR warm-up and schedule, EMA, atomic checkpoints with exact resume, trackers).

Flags follow diffusers' ``examples/unconditional_image_generation/train_unconditional.py`` where they overlap.
Every input is validated before the first training step (``validate_args``, then the data/model checks in
:func:`train`); errors are ``ValueError`` naming the bad value and the valid choices.

Resume is exact: the model, optimizer, LR scheduler, EMA, the gradient scaler, the number of micro-batches
seen (data position; the data order of each epoch is a function of (seed, epoch), see
:class:`~unisde.training.data.EpochSampler`) and the torch/numpy/python RNG state of every rank are restored
(:func:`~unisde.training.checkpoint.load_checkpoint`: safetensors and JSON, pickles only through
``torch.load(weights_only=True)``). A checkpoint of a run with another fingerprint (schedule, parameterisation,
data, UNet config) is refused unless ``--allow_fingerprint_mismatch``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import time
from dataclasses import dataclass, field

import torch

from unisde.training.checkpoint import (
    RUN_FILE,
    check_output_dir,
    clear_run,
    compare_fingerprint,
    load_checkpoint,
    recover_interrupted_saves,
    remove_stale_temporaries,
    resolve_resume,
    save_checkpoint,
    write_json_atomic,
)
from unisde.training.config import resolve_parameterization, resolve_schedule
from unisde.training.export import DEFAULT_SAMPLER, export_pipeline, is_flow_export, make_scheduler
from unisde.training.objectives import (
    FLOW_NOISE_DISTRIBUTIONS,
    WEIGHTING_SCHEMES,
    DenoisingScoreMatching,
    adamw,
    canonical_loss_weighting,
    canonical_noise_distribution,
    check_flow_density_options,
)

logger = logging.getLogger("unisde.train")

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
MIXED_PRECISION = ("no", "fp16", "bf16")
DEFAULT_RESOLUTION_DIGITS = 8
DEFAULT_RESOLUTION = 64


def add_training_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """All ``unisde train`` flags (shared by ``scripts/train.py``)."""
    d = parser.add_argument_group("data")
    d.add_argument(
        "--dataset_name",
        default=None,
        help="Hub dataset id, local dataset path, or 'digits' (the default: "
        "scikit-learn's 8×8 handwritten digits, no network needed)",
    )
    d.add_argument("--dataset_config_name", default=None)
    d.add_argument("--train_data_dir", default=None, help="folder of images (imagefolder) or a save_to_disk dataset")
    d.add_argument("--train_files", nargs="+", default=None, help="parquet/arrow/csv/json files with an image column")
    d.add_argument("--image_column", default=None, help="name of the image column (default: the Image-typed column)")
    d.add_argument("--cache_dir", default=None)
    d.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="training resolution (default 8 for digits, else the UNet config's sample_size or 64)",
    )
    d.add_argument(
        "--channels",
        type=int,
        default=None,
        choices=(1, 3, 4),
        help="convert images to this many channels (default: the dataset's)",
    )
    d.add_argument("--center_crop", action="store_true", help="centre-crop instead of random crop")
    d.add_argument("--random_flip", action="store_true")
    d.add_argument("--dataloader_num_workers", type=int, default=0)

    m = parser.add_argument_group("model")
    m.add_argument(
        "--unet_config", default=None, help="UNet2DModel config: a config.json, a folder holding one, or a JSON string"
    )
    m.add_argument("--block_out_channels", default="32,64", help="comma-separated channels per level")
    m.add_argument("--layers_per_block", type=int, default=1)
    m.add_argument(
        "--attention_levels", default="last", help="levels with self-attention: 'last', 'none' or indices '1,2'"
    )
    m.add_argument("--norm_num_groups", type=int, default=8)

    o = parser.add_argument_group("objective")
    o.add_argument(
        "--schedule",
        default="ddpm-linear",
        help="schedule name (rectified_flow …), JSON config, or a diffusers scheduler config path",
    )
    o.add_argument(
        "--prediction_type",
        default="epsilon",
        help="parameterisation: epsilon, sample, v_prediction, score, edm, flow_prediction, …",
    )
    o.add_argument(
        "--sigma_data", type=float, default=None, help="σ_data for the edm parameterisation / weighting (0.5)"
    )
    o.add_argument(
        "--loss_weighting",
        default="default",
        help="default, epsilon, x0, v, score, edm, likelihood, flow, cosmap, sigma_sqrt",
    )
    o.add_argument(
        "--noise_distribution",
        default=None,
        help="uniform_t, uniform_index, lognormal, uniform_tau, "
        "logit_normal, mode (default: uniform_index for β tables, lognormal for --prediction_type edm, "
        "else uniform_t)",
    )
    o.add_argument("--p_mean", type=float, default=-1.2, help="lognormal: mean of ln σ̃")
    o.add_argument("--p_std", type=float, default=1.2, help="lognormal: std of ln σ̃")
    o.add_argument(
        "--weighting_scheme",
        default=None,
        choices=tuple(WEIGHTING_SCHEMES),
        help="SD3's time density and loss weight (Esser et al. 2024, §3.1), as diffusers' flag: "
        "logit_normal "
        "and mode set that density of the flow noise level τ = σ/(s + σ) (t on the rectified flow) with "
        "the plain flow-matching loss; cosmap and sigma_sqrt weight the flow-matching loss with τ uniform; "
        "none is uniform τ, plain loss. Replaces --noise_distribution and --loss_weighting",
    )
    o.add_argument("--logit_mean", type=float, default=0.0, help="logit_normal: mean m of logit τ (> 0 favours noise)")
    o.add_argument("--logit_std", type=float, default=1.0, help="logit_normal: std of logit τ")
    o.add_argument("--mode_scale", type=float, default=1.29, help="mode: scale c in [−1, 2/(π − 2)]")
    o.add_argument(
        "--shift",
        type=float,
        default=1.0,
        help="SD3 shift τ ↦ shift·τ/(1 + (shift − 1)τ) of the training "
        "noise levels (flow distributions only), recorded as the exported FlowMatch scheduler's shift",
    )
    o.add_argument("--t_min", type=float, default=1e-5, help="smallest time drawn (uniform_t, lognormal)")

    t = parser.add_argument_group("optimisation")
    t.add_argument("--train_batch_size", type=int, default=16, help="per-device batch size")
    t.add_argument("--num_epochs", type=int, default=100)
    t.add_argument("--max_train_steps", type=int, default=None, help="optimizer steps (overrides --num_epochs)")
    t.add_argument("--gradient_accumulation_steps", type=int, default=1)
    t.add_argument("--learning_rate", type=float, default=1e-4)
    t.add_argument("--lr_scheduler", default="cosine", choices=LR_SCHEDULERS)
    t.add_argument("--lr_warmup_steps", type=int, default=500)
    t.add_argument("--adam_beta1", type=float, default=0.95)
    t.add_argument("--adam_beta2", type=float, default=0.999)
    t.add_argument("--adam_weight_decay", type=float, default=1e-6)
    t.add_argument("--adam_epsilon", type=float, default=1e-8)
    t.add_argument("--max_grad_norm", type=float, default=1.0, help="gradient clipping (0 disables)")
    t.add_argument("--use_ema", action="store_true")
    t.add_argument("--ema_inv_gamma", type=float, default=1.0)
    t.add_argument("--ema_power", type=float, default=3 / 4)
    t.add_argument("--ema_max_decay", type=float, default=0.9999)
    t.add_argument("--mixed_precision", default="no", choices=MIXED_PRECISION)
    t.add_argument("--cpu", action="store_true", help="train on CPU even when an accelerator is present")
    t.add_argument("--seed", type=int, default=0)

    c = parser.add_argument_group("output")
    c.add_argument("--output_dir", default="unisde-model")
    c.add_argument("--overwrite_output_dir", action="store_true")
    c.add_argument("--checkpointing_steps", type=int, default=500)
    c.add_argument("--checkpoints_total_limit", type=int, default=None)
    c.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    c.add_argument(
        "--allow_fingerprint_mismatch",
        action="store_true",
        help="resume a checkpoint whose run had "
        "another schedule, parameterisation, data or UNet config (refused otherwise)",
    )
    c.add_argument(
        "--logger",
        default="auto",
        choices=("auto", "tensorboard", "wandb", "none"),
        help="tracker (auto: tensorboard when installed)",
    )
    c.add_argument("--logging_dir", default="logs", help="tracker folder, relative to --output_dir")
    c.add_argument("--logging_steps", type=int, default=10)
    c.add_argument("--default_sampler", default=None, help="sampler recorded in the exported scheduler config")
    c.add_argument("--no_progress", action="store_true", help="no progress bar")
    c.add_argument("--push_to_hub", action="store_true")
    c.add_argument("--hub_model_id", default=None)
    c.add_argument("--hub_token", default=None)
    c.add_argument("--hub_private_repo", action="store_true")
    return parser


def default_args(**overrides) -> argparse.Namespace:
    """The flag defaults as a Namespace, with ``overrides`` (handy from Python and tests)."""
    args = add_training_arguments(argparse.ArgumentParser()).parse_args([])
    for key, value in overrides.items():
        if not hasattr(args, key):
            raise ValueError(f"unknown training option {key!r}")
        setattr(args, key, value)
    return args


def training_command(args) -> str:
    """``unisde train`` with every flag whose value differs from its default, shell-quoted: the command that
    reproduces this run (whatever launcher or Python call started it). Secrets (``--hub_token``) are left out."""
    defaults = vars(default_args())
    parts = ["unisde", "train"]
    for key, value in vars(args).items():
        if key not in defaults or key in ("hub_token",) or value == defaults[key]:
            continue
        flag = f"--{key}"
        if value is True:
            parts.append(flag)
        elif isinstance(value, (list, tuple)):
            parts += [flag, *(shlex.quote(str(v)) for v in value)]
        elif value is not False and value is not None:
            parts += [flag, shlex.quote(str(value))]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- validation
def _positive(args, name, allow_none=False, zero_ok=False):
    value = getattr(args, name)
    if value is None and allow_none:
        return
    if value is None or value < 0 or (value == 0 and not zero_ok):
        raise ValueError(f"--{name} must be {'non-negative' if zero_ok else 'positive'}, got {value!r}")


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"--{name} must list positive integers, got {text!r}")
    return values


@dataclass
class Plan:
    """Everything resolved from the flags before any data or model is touched."""

    schedule: object
    parameterization: object
    loss_weighting: str
    noise_distribution: str
    sampler: str
    extras: dict = field(default_factory=dict)


def validate_args(args) -> Plan:
    """Check the flags that need no data or model (sizes, step counts, names); return the resolved objects."""
    for name in ("train_batch_size", "gradient_accumulation_steps", "checkpointing_steps", "logging_steps"):
        _positive(args, name)
    _positive(args, "max_train_steps", allow_none=True)
    if args.max_train_steps is None:
        _positive(args, "num_epochs")
    _positive(args, "checkpoints_total_limit", allow_none=True)
    _positive(args, "resolution", allow_none=True)
    _positive(args, "lr_warmup_steps", zero_ok=True)
    _positive(args, "dataloader_num_workers", zero_ok=True)
    _positive(args, "max_grad_norm", zero_ok=True)
    if not (args.learning_rate > 0 and math.isfinite(args.learning_rate)):
        raise ValueError(f"--learning_rate must be positive, got {args.learning_rate!r}")
    if args.use_ema and not (0 < args.ema_max_decay < 1):
        raise ValueError(f"--ema_max_decay must lie in (0, 1), got {args.ema_max_decay!r}")
    if args.mixed_precision not in MIXED_PRECISION:
        raise ValueError(f"--mixed_precision {args.mixed_precision!r}; valid choices: {', '.join(MIXED_PRECISION)}")
    if args.push_to_hub and not args.hub_model_id:
        args.hub_model_id = os.path.basename(os.path.abspath(args.output_dir))
    _int_list(args.block_out_channels, "block_out_channels")
    schedule = resolve_schedule(args.schedule)
    options = {} if args.sigma_data is None else {"sigma_data": args.sigma_data}
    param = resolve_parameterization(args.prediction_type, **options)
    scheme = getattr(args, "weighting_scheme", None)
    if scheme is not None:
        if scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"--weighting_scheme {scheme!r}; valid choices: {', '.join(WEIGHTING_SCHEMES)}")
        if args.noise_distribution is not None or args.loss_weighting != "default":
            raise ValueError(
                f"--weighting_scheme {scheme} sets both the noise distribution and the loss weighting "
                f"({' and '.join(WEIGHTING_SCHEMES[scheme])}); drop --noise_distribution "
                f"{args.noise_distribution!r} / --loss_weighting {args.loss_weighting!r}, or drop "
                "--weighting_scheme and give those two instead"
            )
        dist, weighting = WEIGHTING_SCHEMES[scheme]
    else:
        weighting = canonical_loss_weighting(args.loss_weighting)
        dist = args.noise_distribution
        if dist is None:
            dist = "uniform_index" if schedule.is_discrete else ("lognormal" if param.name == "edm" else "uniform_t")
        dist = canonical_noise_distribution(dist)
    if dist == "uniform_index" and not schedule.num_train_timesteps:
        raise ValueError(
            f"--noise_distribution uniform_index needs a schedule with num_train_timesteps; {args.schedule!r} has none"
        )
    try:
        check_flow_density_options(args.logit_std, args.mode_scale, args.shift, args.logit_mean)
    except ValueError as exc:
        raise ValueError(f"--logit_mean/--logit_std/--mode_scale/--shift: {exc}") from None
    if args.shift != 1.0:
        if dist not in FLOW_NOISE_DISTRIBUTIONS:
            raise ValueError(
                f"--shift {args.shift} shifts the flow noise levels of --weighting_scheme or "
                "--noise_distribution "
                f"{'/'.join(FLOW_NOISE_DISTRIBUTIONS)}; the noise distribution here is {dist!r}"
            )
        if not is_flow_export(schedule, param):
            raise ValueError(
                f"--shift {args.shift} is recorded as the exported FlowMatch scheduler's shift, "
                "which needs "
                "--schedule rectified_flow --prediction_type flow_prediction; "
                f"got {args.schedule!r} / {args.prediction_type!r}"
            )
    sampler = args.default_sampler or DEFAULT_SAMPLER
    if args.default_sampler:
        from unisde.plugins import get_sampler

        get_sampler(args.default_sampler)  # unknown name → ValueError listing the samplers
    return Plan(schedule, param, weighting, dist, sampler)


def fingerprint(args, plan: Plan, unet_config: dict) -> dict:
    """What makes two runs the same run (compared when reusing an output directory)."""
    data = args.dataset_name or args.train_data_dir or args.train_files or "digits"
    fp = {
        "schedule": plan.schedule.to_config(),
        "prediction_type": plan.parameterization.name,
        "parameterization_options": dict(plan.parameterization.config),
        "loss_weighting": plan.loss_weighting,
        "noise_distribution": plan.noise_distribution,
        "dataset": data,
        "image_column": args.image_column,
        "unet": {k: v for k, v in unet_config.items() if not k.startswith("_")},
    }
    if plan.noise_distribution in FLOW_NOISE_DISTRIBUTIONS:  # only then: older runs keep their fingerprint
        fp["noise_distribution_options"] = {
            "logit_mean": args.logit_mean,
            "logit_std": args.logit_std,
            "mode_scale": args.mode_scale,
            "shift": args.shift,
        }
    return fp


def distribution_label(args, plan: Plan) -> str:
    """The noise-level distribution with its parameters, for the model card."""
    dist = plan.noise_distribution
    params = {
        "lognormal": f"P_mean={args.p_mean}, P_std={args.p_std}",
        "logit_normal": f"logit_mean={args.logit_mean}, logit_std={args.logit_std}",
        "mode": f"mode_scale={args.mode_scale}",
    }.get(dist, "")
    if dist in FLOW_NOISE_DISTRIBUTIONS:
        params = ", ".join(p for p in (params, f"shift={args.shift}") if p) + "; in τ = σ/(s + σ)"
    label = f"{dist} ({params})" if params else dist
    scheme = getattr(args, "weighting_scheme", None)
    return f"{label}; SD3 weighting_scheme {scheme}" if scheme else label


# ---------------------------------------------------------------------------------------------- model
def _load_unet_config(spec: str) -> dict:
    text = spec.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--unet_config looks like JSON but does not parse: {exc}") from None
    path = os.path.join(text, "config.json") if os.path.isdir(text) else text
    if not os.path.isfile(path):
        raise ValueError(
            f"--unet_config {spec!r}: no such file (expected a config.json, a folder holding one, or JSON)"
        )
    with open(path) as fh:
        return json.load(fh)


def unet_config_from_args(args, resolution: int, channels: int) -> dict:
    """The UNet2DModel config: ``--unet_config`` if given (checked against the data), else built from the flags
    (``--block_out_channels``, ``--layers_per_block``, ``--attention_levels``, ``--norm_num_groups``)."""
    from diffusers import UNet2DModel

    if args.unet_config:
        cfg = _load_unet_config(args.unet_config)
        cfg.setdefault("sample_size", resolution)
        in_ch, out_ch = cfg.get("in_channels", 3), cfg.get("out_channels", 3)
        if in_ch != channels or out_ch != channels:
            raise ValueError(
                f"channel mismatch: the images have {channels} channel(s) but the UNet config has "
                f"in_channels={in_ch}, out_channels={out_ch}; pass --channels {in_ch} to convert the "
                "images "
                "or fix the config"
            )
        size = cfg["sample_size"]
        size = size if isinstance(size, int) else tuple(size)
        if size != resolution and size != (resolution, resolution):
            raise ValueError(
                f"resolution mismatch: --resolution {resolution} but the UNet config has sample_size={size}"
            )
    else:
        blocks = _int_list(args.block_out_channels, "block_out_channels")
        levels = str(args.attention_levels).strip().lower()
        if levels == "last":
            attn = {len(blocks) - 1}
        elif levels in ("none", ""):
            attn = set()
        else:
            try:
                attn = {int(v) for v in levels.split(",") if v}
            except ValueError:
                raise ValueError(
                    f"--attention_levels must be 'last', 'none' or indices, got {args.attention_levels!r}"
                ) from None
            if any(i < 0 or i >= len(blocks) for i in attn):
                raise ValueError(f"--attention_levels {args.attention_levels!r} outside levels 0 … {len(blocks) - 1}")
        for c in blocks:
            if c % args.norm_num_groups:
                raise ValueError(
                    f"--block_out_channels {c} is not divisible by --norm_num_groups {args.norm_num_groups}"
                )
        down = ["AttnDownBlock2D" if i in attn else "DownBlock2D" for i in range(len(blocks))]
        up = ["AttnUpBlock2D" if i in attn else "UpBlock2D" for i in reversed(range(len(blocks)))]
        cfg = {
            "sample_size": resolution,
            "in_channels": channels,
            "out_channels": channels,
            "layers_per_block": args.layers_per_block,
            "block_out_channels": blocks,
            "down_block_types": down,
            "up_block_types": up,
            "norm_num_groups": args.norm_num_groups,
            "attention_head_dim": min(8, blocks[-1]),
        }
    n_down = len(cfg.get("down_block_types", UNet2DModel().config.down_block_types))
    factor = 2 ** (n_down - 1)
    if resolution % factor:
        raise ValueError(
            f"--resolution {resolution} is not divisible by {factor}, which a UNet with {n_down} levels needs"
        )
    return cfg


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank). The accelerator is still live (process group included);
    call :meth:`finish` when done with it."""

    global_step: int
    losses: list
    output_dir: str
    accelerator: object = None
    model: object = None
    ema: object = None
    resumed_from: str | None = None
    samples_per_second: float = float("nan")

    def finish(self) -> None:
        """End trackers and shut the process group down on every rank together (a barrier first: a rank that
        exits early can leave its peer waiting in a collective).

        The group object itself is retired, never destroyed: torch's ``~ProcessGroupGloo`` joins its worker
        threads while the destroying thread holds the GIL, and a worker still releasing a finished collective
        whose tensor is owned by Python needs the GIL for that decref — a deadlock. It struck about one run in
        thirty on an overloaded 2-core CPU, in the DDP reducer's destructor when the last reference to the group
        went (native stacks: main thread in ``std::thread::join`` under ``~ProcessGroupGloo``, a gloo thread in
        ``gil_scoped_acquire`` under ``ConcretePyInterpreterVTable::decref``). ``destroy_process_group`` still
        runs (it shuts the backends down and unregisters the group); the idle threads end with the process.
        """
        import torch.distributed as dist

        self.accelerator.wait_for_everyone()
        if dist.is_available() and dist.is_initialized():
            _retire_process_group(dist.group.WORLD)
        self.accelerator.end_training()


def end_process(code: int = 0) -> None:
    """End a process that took part in a multi-process run with exit status ``code``, skipping the interpreter's
    and the C++ runtime's exit-time teardown (a single-process run returns normally).

    After :meth:`TrainResult.finish` every rank's work is on disk and the trackers are closed, but the retired
    gloo group's worker threads are still alive, and tearing the runtime down around them aborted a finished
    2-process run with ``terminate called without an active exception`` (SIGABRT on rank 0 after its report was
    written; seen once in CI, not reproduced in 42 runs on a loaded 2-core machine). Flushing stdio and leaving
    through ``os._exit`` makes a finished run report success.
    """
    import os
    import sys

    import torch.distributed as dist

    if not (dist.is_available() and _RETIRED_PROCESS_GROUPS):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _retire_process_group(group) -> None:
    """Keep ``group`` alive for the rest of the process (one deliberately leaked reference; see
    :meth:`TrainResult.finish` for the deadlock its destructor can cause)."""
    import ctypes

    ctypes.pythonapi.Py_IncRef(ctypes.py_object(group))
    _RETIRED_PROCESS_GROUPS.append(group)  # visible to debuggers and tests


_RETIRED_PROCESS_GROUPS: list = []


def _tracker(args) -> list:
    if args.logger == "none":
        return []
    if args.logger in ("auto", "tensorboard"):
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            if args.logger == "tensorboard":
                raise ValueError(
                    "--logger tensorboard but tensorboard is not installed (pip install tensorboard)"
                ) from None
            return []
        return ["tensorboard"]
    return [args.logger]


def train(args, *, before_commit=None) -> TrainResult:
    """Train per ``args`` (a Namespace from :func:`add_training_arguments` / :func:`default_args`).

    Must run in every process of a distributed launch. ``before_commit`` is a test hook passed to
    :func:`~unisde.training.checkpoint.save_checkpoint`.
    """
    from accelerate import Accelerator
    from accelerate.utils import GradientAccumulationPlugin, ProjectConfiguration, set_seed
    from diffusers import UNet2DModel
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from unisde.training import data as D

    plan = validate_args(args)
    output_dir = args.output_dir

    # --- checks that touch the file system and the data, all before training starts -------------------
    # A save killed between its two renames left the checkpoint as .checkpoint-N.old: put it back before
    # "latest" is resolved (renames only, so every rank may do it at once).
    recover_interrupted_saves(output_dir)
    resume_path = resolve_resume(args.resume_from_checkpoint, output_dir)
    dataset = D.load_image_dataset(
        args.dataset_name, args.dataset_config_name, args.train_data_dir, args.train_files, cache_dir=args.cache_dir
    )
    image_column = D.find_image_column(dataset, args.image_column)
    is_digits = not (args.train_data_dir or args.train_files) and args.dataset_name in (None, D.DIGITS)
    channels = args.channels or D.image_channels(dataset, image_column)
    resolution = args.resolution
    if resolution is None:
        if args.unet_config:
            size = _load_unet_config(args.unet_config).get("sample_size", DEFAULT_RESOLUTION)
            resolution = size if isinstance(size, int) else size[0]
        else:
            resolution = DEFAULT_RESOLUTION_DIGITS if is_digits else DEFAULT_RESOLUTION
    unet_cfg = unet_config_from_args(args, resolution, channels)
    fp = fingerprint(args, plan, unet_cfg)
    if resume_path is not None:
        compare_fingerprint(resume_path, fp, args.allow_fingerprint_mismatch)
    state = check_output_dir(output_dir, fp, args.overwrite_output_dir, resuming=resume_path is not None)
    out_abs = os.path.abspath(output_dir)
    if (
        state == "overwrite"
        and resume_path is not None
        and os.path.commonpath([os.path.abspath(resume_path), out_abs]) == out_abs
    ):
        raise ValueError(
            f"--overwrite_output_dir would delete the checkpoint --resume_from_checkpoint names "
            f"({resume_path!r}); resume without --overwrite_output_dir or from a copy elsewhere"
        )

    grad_accum = GradientAccumulationPlugin(num_steps=args.gradient_accumulation_steps, sync_with_dataloader=False)
    trackers = _tracker(args)
    project = ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, args.logging_dir))
    accelerator = Accelerator(
        mixed_precision=args.mixed_precision,
        cpu=args.cpu,
        log_with=trackers or None,
        gradient_accumulation_plugin=grad_accum,
        project_config=project,
    )
    if len(dataset) < args.train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"the dataset has {len(dataset)} images, fewer than one global batch "
            f"({args.train_batch_size} × {accelerator.num_processes} processes)"
        )
    if accelerator.is_main_process:
        os.makedirs(output_dir, exist_ok=True)
        if state == "overwrite":
            clear_run(output_dir)
        remove_stale_temporaries(output_dir)
        write_json_atomic(os.path.join(output_dir, RUN_FILE), {"fingerprint": fp, "command": training_command(args)})
    accelerator.wait_for_everyone()

    # --- model, optimizer, data --------------------------------------------------------------------
    set_seed(args.seed)  # identical initial weights on every rank
    model = UNet2DModel.from_config(unet_cfg)
    ema = None
    if args.use_ema:
        ema = EMAModel(
            model.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=UNet2DModel,
            model_config=model.config,
        )
    optimizer = adamw(
        model.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )
    dataset = D.ImageDataset(dataset, image_column, resolution, channels, args.center_crop, args.random_flip, args.seed)
    sampler = D.EpochSampler(len(dataset), seed=args.seed)
    # The loader gets its own generator: creating an iterator draws a worker seed from it, which from the global
    # RNG would shift the noise stream of a resumed run (the iterator is created after the RNG state is restored).
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        sampler=sampler,
        drop_last=True,
        collate_fn=D.collate,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    batches_per_epoch = len(dataset) // (args.train_batch_size * accelerator.num_processes)  # = len(loader) per rank
    updates_per_epoch = batches_per_epoch / args.gradient_accumulation_steps
    max_steps = args.max_train_steps or max(1, int(math.ceil(args.num_epochs * updates_per_epoch)))
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_steps * accelerator.num_processes,
    )
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    batches_per_epoch = len(loader)
    if ema is not None:
        ema.to(accelerator.device)
    objective = DenoisingScoreMatching(
        plan.schedule,
        plan.parameterization,
        plan.loss_weighting,
        plan.noise_distribution,
        t_min=args.t_min,
        p_mean=args.p_mean,
        p_std=args.p_std,
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
        mode_scale=args.mode_scale,
        shift=args.shift,
    )

    # Per-rank noise: each rank draws different t and ε from the global RNG, seeded by (seed, rank); its state is
    # saved per rank in every checkpoint and restored below.
    set_seed(args.seed, device_specific=True)
    global_step, batches_seen = 0, 0
    if resume_path is not None:
        manifest = load_checkpoint(accelerator, resume_path, model, optimizer, lr_scheduler, ema)
        global_step, batches_seen = int(manifest["step"]), int(manifest["batches_seen"])
        if ema is not None:
            ema.to(accelerator.device)
        if manifest.get("num_processes") != accelerator.num_processes:
            logger.warning(
                "resuming a checkpoint written by %s processes with %s: data order and per-rank RNG are not "
                "restored exactly",
                manifest.get("num_processes"),
                accelerator.num_processes,
            )
        accelerator.print(f"resumed from {resume_path} at step {global_step}")
    if accelerator.is_main_process and trackers:
        accelerator.init_trackers(
            "unisde",
            config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and v is not None},
        )

    schedule_label = (
        args.schedule
        if isinstance(args.schedule, str)
        and not args.schedule.strip().startswith("{")
        and not os.path.exists(args.schedule)
        else None
    )

    def card(num_steps):
        files = " ".join(args.train_files) if args.train_files else None
        dataset_name = args.dataset_name or args.train_data_dir or files or "digits"
        return dict(
            schedule=plan.schedule,
            parameterization=plan.parameterization,
            loss_weighting=plan.loss_weighting,
            noise_distribution=distribution_label(args, plan),
            dataset=dataset_name,
            training_command=training_command(args),
            num_steps=num_steps,
            resolution=resolution,
            channels=channels,
            sampler=plan.sampler,
            repo_id=args.hub_model_id,
            schedule_name=schedule_label,
        )

    def export(num_steps):
        if not accelerator.is_main_process:
            return
        unet = accelerator.unwrap_model(model)
        if ema is not None:
            ema.store(unet.parameters())
            ema.copy_to(unet.parameters())
        try:
            export_pipeline(
                unet,
                make_scheduler(plan.schedule, plan.parameterization, plan.sampler, shift=args.shift),
                output_dir,
                card(num_steps),
            )
        finally:
            if ema is not None:
                ema.restore(unet.parameters())

    def batches():
        epoch, skip = divmod(batches_seen, batches_per_epoch)
        while True:
            loader.set_epoch(epoch)
            it = accelerator.skip_first_batches(loader, skip) if skip else loader
            for batch in it:
                yield batch
            epoch, skip = epoch + 1, 0

    progress = None
    if accelerator.is_local_main_process and not args.no_progress:
        from tqdm.auto import tqdm

        progress = tqdm(total=max_steps, initial=global_step, desc="train", unit="step", dynamic_ncols=True)
    # Losses stay on the device and are reduced across ranks in one collective every --logging_steps (and at
    # checkpoints), so the step itself never waits for a host sync.
    losses, pending = [], []
    window = torch.zeros((), device=accelerator.device)
    start, start_step = time.perf_counter(), global_step
    global_batch = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    model.train()
    stream = batches()
    while global_step < max_steps:
        batch = next(stream)
        batches_seen += 1
        with accelerator.accumulate(model):
            loss = objective.loss(model, batch["pixel_values"])
            accelerator.backward(loss)
            if accelerator.sync_gradients and args.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
            optimizer.step()
            lr_scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        window = window + loss.detach().float() / args.gradient_accumulation_steps
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        if ema is not None:
            ema.step(model.parameters())
        pending.append(window)
        window = torch.zeros((), device=accelerator.device)
        if progress is not None:
            progress.update(1)
        checkpoint_now = global_step % args.checkpointing_steps == 0 or global_step == max_steps
        if global_step % args.logging_steps == 0 or checkpoint_now:
            losses.extend(accelerator.reduce(torch.stack(pending), "mean").tolist())
            pending = []
            step_loss = losses[-1]
            rate = (global_step - start_step) * global_batch / max(time.perf_counter() - start, 1e-9)
            if progress is not None:
                progress.set_postfix(
                    loss=f"{step_loss:.4f}", img_s=f"{rate:.1f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}"
                )
            if trackers:
                logs = {"loss": step_loss, "lr": lr_scheduler.get_last_lr()[0], "images_per_second": rate}
                if ema is not None:
                    logs["ema_decay"] = ema.cur_decay_value
                accelerator.log(logs, step=global_step)
        if checkpoint_now:
            save_checkpoint(
                accelerator,
                output_dir,
                global_step,
                {"batches_seen": batches_seen, "fingerprint": fp},
                args.checkpoints_total_limit,
                before_commit=before_commit,
                ema=ema,
            )
            export(global_step)
            accelerator.wait_for_everyone()
    if progress is not None:
        progress.close()
    elapsed = time.perf_counter() - start
    rate = (global_step - start_step) * global_batch / max(elapsed, 1e-9)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.push_to_hub:
        from unisde.diffusers.hub import push_folder

        push_folder(
            output_dir,
            args.hub_model_id,
            token=args.hub_token,
            private=args.hub_private_repo or None,
            commit_message=f"unisde train: step {global_step}",
        )
    for tracker in accelerator.trackers:  # not end_training(): that also tears down the process group,
        tracker.finish()  # which the caller may still use (see TrainResult)
    return TrainResult(global_step, losses, output_dir, accelerator, model, ema, resume_path, rate)


__all__ = [
    "add_training_arguments",
    "default_args",
    "validate_args",
    "train",
    "TrainResult",
    "unet_config_from_args",
    "training_command",
    "distribution_label",
]

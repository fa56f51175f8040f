"""``unisde sample``: any diffusers pipeline, any unisde sampler, an image grid and the exact scheduler config used."""

from __future__ import annotations

import json
import os

help = "sample a diffusers pipeline (folder or Hub id) with any unisde sampler; writes an image grid and its config"
description = (
    help + ". Loads the pipeline, swaps in UnifiedScheduler.from_config(its scheduler config, "
    "sampler=...), shows a progress bar and writes OUT (PNG grid) plus OUT.json (the scheduler config, "
    "seed, steps, prompt). A Hub id is fetched by diffusers (this needs network access)."
)


def add_arguments(parser):
    parser.add_argument("pipeline", help="pipeline folder (with model_index.json) or Hub repo id")
    parser.add_argument("--sampler", required=True, help="a registered sampler (unisde plugins lists them)")
    parser.add_argument("--sampler_options", default=None, help="JSON dict of sampler options")
    parser.add_argument("--grid", default=None, help="time grid name (default: the sampler's or the config's)")
    parser.add_argument("--steps", type=int, required=True, help="number of inference steps")
    parser.add_argument("--prompt", default=None, help="text prompt (text-conditioned pipelines only)")
    parser.add_argument("--num_images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png", help="output PNG grid (OUT.json gets the config)")


def _pipeline_class(path: str):
    """The pipeline class named in a local folder's model_index.json (None for a Hub id)."""
    import diffusers

    index = os.path.join(path, "model_index.json")
    if not os.path.isdir(path):
        if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
            raise ValueError(f"{path!r} is neither a pipeline folder nor a Hub repo id (owner/name)")
        return None
    if not os.path.isfile(index):
        raise ValueError(f"{path!r} is not a diffusers pipeline folder: it has no model_index.json")
    with open(index) as fh:
        name = json.load(fh).get("_class_name", "")
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise ValueError(f"{index} names pipeline class {name!r}, which this diffusers version does not have")
    return cls


def _is_adaptive(name: str) -> bool:
    from unisde.plugins import list_adaptive_samplers

    return name in list_adaptive_samplers()


def _check_adaptive_pipeline(cls, sampler: str) -> None:
    """An adaptive-step sampler (``dpm_adaptive``) has no time grid for a pipeline's loop: it runs through
    :func:`unisde.sampling.sample_adaptive` on the pipeline's UNet, which this command does for the unconditional
    UNet pipelines (components ``unet`` and ``scheduler``: DDPMPipeline, DDIMPipeline); anything else is refused."""
    import inspect

    components = set(inspect.signature(cls.__init__).parameters) - {"self"}
    if components != {"unet", "scheduler"}:
        raise ValueError(
            f"sampler {sampler!r} chooses its evaluation times from the model's outputs, so it cannot run inside "
            f"{cls.__name__}'s fixed-step loop; unisde sample runs it on unconditional UNet pipelines (DDPMPipeline, "
            f"DDIMPipeline); for {cls.__name__} call unisde.sampling.sample_adaptive with a denoiser of your own"
        )


def _validate(args):
    import inspect

    from unisde.plugins import get_adaptive_sampler, get_sampler, list_grids

    adaptive = _is_adaptive(args.sampler)
    sampler_cls = get_adaptive_sampler(args.sampler) if adaptive else get_sampler(args.sampler)
    options = None
    if args.sampler_options is not None:
        try:
            options = json.loads(args.sampler_options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--sampler_options is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError(f"--sampler_options must be a JSON object, got {type(options).__name__}")
        sampler_cls.validate_options(options)
    if args.grid is not None and args.grid not in list_grids():
        from unisde._tensor import unknown_name_error

        raise unknown_name_error("time grid", args.grid, list_grids())
    for name in ("steps", "num_images"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise ValueError(f"--out {args.out!r}: folder {out_dir!r} does not exist")
    cls = _pipeline_class(args.pipeline)
    if cls is not None and adaptive:
        _check_adaptive_pipeline(cls, args.sampler)
    if cls is not None:
        takes_prompt = "prompt" in inspect.signature(cls.__call__).parameters
        if args.prompt is not None and not takes_prompt:
            raise ValueError(f"{cls.__name__} is unconditional: it takes no --prompt")
        if args.prompt is None and takes_prompt:
            raise ValueError(f"{cls.__name__} is text-conditioned: pass --prompt")
    return options


def image_grid(images, columns: int | None = None):
    """PIL images → one grid image (rows of ``columns``, default ⌈√n⌉)."""
    import math

    from PIL import Image

    n = len(images)
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    w, h = images[0].size
    grid = Image.new(images[0].mode, (columns * w, rows * h))
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * w, (i // columns) * h))
    return grid


def run(args):
    import torch

    from unisde.diffusers.pipeline import load_pipeline

    options = _validate(args)  # every check before any weight is loaded
    overrides = {"time_grid": args.grid} if args.grid else {}
    record = {
        "pipeline": args.pipeline,
        "sampler": args.sampler,
        "steps": args.steps,
        "seed": args.seed,
        "prompt": args.prompt,
        "num_images": args.num_images,
    }
    if _is_adaptive(args.sampler):
        images, info, config = _sample_adaptive(args, options, overrides)
        record["adaptive"] = info
    else:
        pipe = load_pipeline(args.pipeline, args.sampler, sampler_options=options, **overrides)
        call = {"num_inference_steps": args.steps, "generator": torch.Generator().manual_seed(args.seed)}
        if args.prompt is not None:
            call["prompt"] = [args.prompt] * args.num_images
        else:
            call["batch_size"] = args.num_images
        images = pipe(**call).images
        config = dict(pipe.scheduler.config)
    image_grid(images).save(args.out)
    record["scheduler_config"] = config
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump(record, fh, indent=2, default=str)
    print(f"wrote {args.out} ({len(images)} images) and {os.path.splitext(args.out)[0]}.json")
    return 0


def _sample_adaptive(args, options, overrides):
    """An adaptive-step sampler on an unconditional UNet pipeline: the schedule and parameterisation of its scheduler
    config (converted as ``UnifiedScheduler.from_config`` does), ``unisde.sampling.sample_adaptive`` on its UNet over
    the interval of the ``--steps`` grid, and DDPMPipeline's image post-processing. Returns (images, the sampler's
    info: NFE, accepted and rejected steps, the scheduler config that holds the schedule)."""
    import torch
    from diffusers import DiffusionPipeline

    from unisde.diffusers.scheduler import UnifiedScheduler
    from unisde.sampling import sample_adaptive

    pipe = DiffusionPipeline.from_pretrained(args.pipeline)
    _check_adaptive_pipeline(type(pipe), args.sampler)  # a Hub id's class is known only now
    # the schedule, parameterisation and grid of the pipeline's scheduler (sampler= takes only those from it)
    source = UnifiedScheduler.from_config(dict(pipe.scheduler.config), sampler="ddim", **overrides)
    unet = pipe.unet
    size = unet.config.sample_size
    size = (size, size) if isinstance(size, int) else tuple(size)
    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn((args.num_images, unet.config.in_channels, *size), generator=generator)
    with torch.no_grad():
        x, info = sample_adaptive(
            unet,
            noise,
            schedule=source.noise_schedule,
            parameterization=source.parameterization,
            sampler=args.sampler,
            num_inference_steps=args.steps,
            time_grid=overrides.get("time_grid"),
            sampler_options=options,
            generator=generator,
        )
    image = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().numpy()
    config = {**dict(source.config), "sampler": args.sampler, "sampler_options": options or {}}
    print(
        f"{args.sampler}: {info['nfe']} model evaluations ({info['n_accept']} steps accepted, "
        f"{info['n_reject']} rejected)"
    )
    return pipe.numpy_to_pil(image), info, config

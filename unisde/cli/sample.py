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


def _validate(args):
    import inspect

    from unisde.plugins import get_sampler, list_grids

    get_sampler(args.sampler)
    options = None
    if args.sampler_options is not None:
        try:
            options = json.loads(args.sampler_options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--sampler_options is not JSON: {exc}") from None
        if not isinstance(options, dict):
            raise ValueError(f"--sampler_options must be a JSON object, got {type(options).__name__}")
        get_sampler(args.sampler).validate_options(options)
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
    pipe = load_pipeline(args.pipeline, args.sampler, sampler_options=options, **overrides)
    call = {"num_inference_steps": args.steps, "generator": torch.Generator().manual_seed(args.seed)}
    if args.prompt is not None:
        call["prompt"] = [args.prompt] * args.num_images
    else:
        call["batch_size"] = args.num_images
    images = pipe(**call).images
    image_grid(images).save(args.out)
    record = {
        "pipeline": args.pipeline,
        "sampler": args.sampler,
        "steps": args.steps,
        "seed": args.seed,
        "prompt": args.prompt,
        "num_images": args.num_images,
        "scheduler_config": {k: v for k, v in dict(pipe.scheduler.config).items()},
    }
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
        json.dump(record, fh, indent=2, default=str)
    print(f"wrote {args.out} ({len(images)} images) and {os.path.splitext(args.out)[0]}.json")
    return 0

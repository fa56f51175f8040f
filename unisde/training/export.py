"""Exporting a trained UNet as a diffusers pipeline folder with a UnifiedScheduler and a model card.

The folder is what ``DDPMPipeline.save_pretrained`` writes — ``model_index.json``, ``unet/``, ``scheduler/`` —
with the scheduler entry naming ``["unisde.scheduler", "UnifiedScheduler"]`` (what diffusers itself writes for a
class from outside its libraries). diffusers resolves such a library through ``sys.modules``, and
``import unisde`` registers ``unisde.scheduler`` there (lazily), so ``import unisde`` before
``DiffusionPipeline.from_pretrained(path)`` is all a user needs (``unisde.load_pipeline`` does it for them).
"""

from __future__ import annotations

import os
import shutil

from unisde.training.checkpoint import PIPELINE_ENTRIES

DEFAULT_SAMPLER = "ddim"
"""Sampler recorded in the exported scheduler config unless one is chosen (``--default_sampler``)."""


def is_flow_export(schedule, parameterization) -> bool:
    """Whether a run exports a FlowMatch-compatible scheduler: the rectified flow with flow prediction and FlowMatch's
    model timesteps t·N."""
    return (
        getattr(schedule, "name", "") == "rectified-flow"
        and parameterization.name == "flow_prediction"
        and getattr(schedule, "timestep_convention", "t") == "t"
        and float(getattr(schedule, "timestep_scale", 0.0)) == float(schedule.num_train_timesteps or -1)
    )


def make_scheduler(
    schedule,
    parameterization,
    sampler: str = DEFAULT_SAMPLER,
    sampler_options: dict | None = None,
    clip_sample: bool = True,
    shift: float = 1.0,
):
    """A UnifiedScheduler carrying the training schedule and parameterisation.

    β-table schedules that came from a diffusers config keep their DDPM keys (num_train_timesteps, beta_*), so
    the config stays readable by stock diffusers schedulers; every other schedule travels as its
    ``NoiseSchedule.to_config()`` dict in the ``schedule`` key. EDM's σ_data goes in ``sigma_data``.
    ``clip_sample`` (x̂0 clipped to [−1, 1], diffusers' DDPMScheduler default) matches the training data range.

    A rectified flow trained with flow prediction (:func:`is_flow_export`) is exported as the conversion of
    ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=N, shift=shift)``: the config carries FlowMatch's keys
    (shift, dynamic-shifting keys, …) beside unisde's (rectified-flow schedule, flow_prediction, the flow_match grid,
    the flow sigmas convention), so ``FlowMatchEulerDiscreteScheduler.from_config(config)`` gives the native
    scheduler and ``UnifiedScheduler.from_config`` of that gives this one back. ``clip_sample`` is off there
    (FlowMatch does not clip; clipping would make the round trip lossy). ``shift`` ≠ 1 needs such a run.
    """
    from unisde.diffusers.scheduler import UnifiedScheduler

    if is_flow_export(schedule, parameterization):
        from diffusers import FlowMatchEulerDiscreteScheduler

        source = FlowMatchEulerDiscreteScheduler(
            num_train_timesteps=int(schedule.num_train_timesteps), shift=float(shift)
        )
        kwargs = (
            {}
            if sampler == "ddim" and not sampler_options
            else {"sampler": sampler, "sampler_options": dict(sampler_options or {})}
        )
        return UnifiedScheduler.from_config(source.config, **kwargs)
    if shift != 1.0:
        raise ValueError(
            f"shift={shift} is a FlowMatch export option: it needs the rectified-flow schedule with "
            f"flow_prediction, got {schedule!r} / {parameterization.name!r}"
        )
    spec = schedule.to_config()
    kwargs: dict = {}
    if spec.get("name") == "diffusers":
        kwargs.update({k: v for k, v in spec.items() if k != "name"})
    else:
        kwargs["schedule"] = spec
        if schedule.num_train_timesteps:
            kwargs["num_train_timesteps"] = int(schedule.num_train_timesteps)
    options = dict(parameterization.config)
    if "sigma_data" in options and parameterization.name == "edm":  # the config key UnifiedScheduler reads for edm
        kwargs["sigma_data"] = float(options.pop("sigma_data"))
    options = {k: v for k, v in options.items() if v != type(parameterization).options.get(k)}
    if options:  # the other non-default options (EDM's prediction_type and c_noise, cm's σ_data and ε …)
        kwargs["parameterization_options"] = options
    return UnifiedScheduler(
        sampler=sampler,
        sampler_options=dict(sampler_options or {}),
        prediction_type=parameterization.name,
        clip_sample=clip_sample,
        **kwargs,
    )


def model_card(
    *,
    schedule,
    parameterization,
    loss_weighting: str,
    noise_distribution: str,
    dataset: str,
    training_command: str | None,
    num_steps: int,
    resolution: int,
    channels: int,
    sampler: str,
    repo_id: str | None = None,
    sample_grid: str | None = None,
    quality: str | None = None,
    extra: str | None = None,
    schedule_name: str | None = None,
) -> str:
    """The README.md model card: YAML metadata (library_name diffusers, tags incl. unisde, schedule and
    parameterisation, the dataset when it is a Hub id) and a body with the training command.

    ``sample_grid``: relative path of a sample-grid image to show; ``quality``: Markdown (table or figure) with
    the quality measurement; ``extra``: any further Markdown. Each section is omitted when not given.
    """
    from huggingface_hub import ModelCardData

    sched_name = schedule_name or schedule.to_config().get("name", schedule.name)
    tags = [
        "unisde",
        "diffusers",
        "unconditional-image-generation",
        "diffusion",
        "score-based",
        f"schedule-{sched_name}",
        f"parameterization-{parameterization.name}",
    ]
    hub_dataset = dataset if dataset and "/" in dataset and not os.path.exists(dataset) else None
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=tags,
        datasets=[hub_dataset] if hub_dataset else None,
        license=None,
    )
    load_id = repo_id or "PATH_OR_REPO_ID"
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {repo_id.split('/')[-1] if repo_id else 'unisde diffusion model'}",
        "",
        f"An unconditional {resolution}×{resolution}, {channels}-channel diffusion model "
        "(diffusers `UNet2DModel`) "
        f"trained with [unisde](https://github.com/) under the **{sched_name}** schedule with "
        f"**{parameterization.name}** parameterisation.",
        "",
        "| | |",
        "|---|---|",
        f"| schedule | `{schedule.to_config()}` |",
        f"| parameterisation | `{parameterization.name}` {parameterization.config or ''} |",
        f"| loss weighting | `{loss_weighting}` |",
        f"| noise-level distribution | `{noise_distribution}` |",
        f"| dataset | `{dataset}` |",
        f"| optimisation steps | {num_steps} |",
        f"| default sampler | `{sampler}` |",
        "",
        "## Sampling",
        "",
        "Any unisde sampler runs on this checkpoint:",
        "",
        "```python",
        "import unisde",
        "",
        f'pipe = unisde.load_pipeline("{load_id}", sampler="{sampler}")',
        "images = pipe(batch_size=16, num_inference_steps=50).images",
        "```",
        "",
        "or with plain diffusers (after `import unisde`, which makes `UnifiedScheduler` resolvable):",
        "",
        "```python",
        "import unisde  # noqa: F401",
        "from diffusers import DiffusionPipeline",
        "",
        f'pipe = DiffusionPipeline.from_pretrained("{load_id}")',
        "```",
        "",
    ]
    if sample_grid:
        lines += ["## Samples", "", f"![samples]({sample_grid})", ""]
    if quality:
        lines += ["## Quality", "", quality.strip(), ""]
    if training_command:
        lines += [
            "## Training command",
            "",
            "This checkpoint was produced by:",
            "",
            "```bash",
            training_command,
            "```",
            "",
        ]
    if extra:
        lines += [extra.strip(), ""]
    return "\n".join(lines)


def write_model_card(output_dir: str, **card) -> str:
    """(Re)write ``output_dir/README.md`` from :func:`model_card` arguments; returns the path. Used later to add
    the sample grid and quality figure to a card."""
    path = os.path.join(output_dir, "README.md")
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(model_card(**card))
    os.replace(tmp, path)
    return path


def export_pipeline(unet, scheduler, output_dir: str, card: dict | None = None) -> str:
    """Write ``DDPMPipeline(unet, scheduler)`` into ``output_dir`` (plus README.md from ``card``), each entry
    replaced atomically: the pipeline is saved to a temporary folder inside ``output_dir`` and moved into place
    with ``os.replace``, so a reader never sees a half-written unet/ or scheduler/."""
    from diffusers import DDPMPipeline

    os.makedirs(output_dir, exist_ok=True)
    tmp = os.path.join(output_dir, f".pipeline-{os.getpid()}.tmp")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(tmp, safe_serialization=True)
    if card is not None:
        with open(os.path.join(tmp, "README.md"), "w") as fh:
            fh.write(model_card(**card))
    for name in PIPELINE_ENTRIES:
        src, dst = os.path.join(tmp, name), os.path.join(output_dir, name)
        if not os.path.exists(src):
            continue
        if os.path.isdir(src) and os.path.exists(dst):
            old = dst + ".old"
            if os.path.exists(old):
                shutil.rmtree(old)
            os.replace(dst, old)
            os.replace(src, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(src, dst)
    shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


__all__ = ["is_flow_export", "make_scheduler", "model_card", "write_model_card", "export_pipeline", "DEFAULT_SAMPLER"]

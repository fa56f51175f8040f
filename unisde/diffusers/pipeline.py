"""``unisde.load_pipeline``: a diffusers pipeline (local folder or Hub repo) whose scheduler runs any unisde sampler."""

from __future__ import annotations

import inspect


def _scheduler_keys() -> set:
    from unisde.diffusers.scheduler import UnifiedScheduler

    return set(inspect.signature(UnifiedScheduler.__init__).parameters) - {"self"}


def load_pipeline(
    path_or_repo_id: str,
    sampler: str | None = None,
    *,
    sampler_options: dict | None = None,
    device=None,
    torch_dtype=None,
    pipeline_kwargs: dict | None = None,
    **options,
):
    """Load a diffusers pipeline and give it a :class:`~unisde.scheduler.UnifiedScheduler`.

    ``path_or_repo_id``: a pipeline folder (e.g. the ``--output_dir`` of ``unisde train``) or a Hub repo id;
    any diffusers pipeline works — a stock scheduler (DDPM, DDIM, Euler, EDM, …) is converted with
    ``UnifiedScheduler.from_config``, keeping its schedule and parameterisation.
    ``sampler``: a registered sampler name (default: the one recorded in the checkpoint, or the sampler that
    reproduces the stock scheduler's algorithm). ``options``: keys of UnifiedScheduler's config (``time_grid``,
    ``t_min``, ``clip_sample``, …) override the config; any other keyword is a sampler option (as is
    ``sampler_options``), validated by the sampler. ``pipeline_kwargs`` go to ``DiffusionPipeline.from_pretrained``
    (``revision``, ``cache_dir``, ``local_files_only``, …).
    """
    from diffusers import DiffusionPipeline

    from unisde.diffusers.scheduler import UnifiedScheduler
    from unisde.plugins import get_sampler

    if sampler is not None:
        get_sampler(sampler)  # unknown name → ValueError listing the samplers, before any download
    keys = _scheduler_keys()
    config_overrides = {k: v for k, v in options.items() if k in keys}
    extra_sampler_options = {k: v for k, v in options.items() if k not in keys}
    if sampler_options is not None and not isinstance(sampler_options, dict):
        raise ValueError(f"sampler_options must be a dict, got {type(sampler_options).__name__}")
    kwargs = dict(pipeline_kwargs or {})
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    pipe = DiffusionPipeline.from_pretrained(path_or_repo_id, **kwargs)
    current = pipe.scheduler
    user_options = {**(sampler_options or {}), **extra_sampler_options}
    needs_new = not isinstance(current, UnifiedScheduler) or sampler is not None or user_options or config_overrides
    if needs_new:
        cfg = dict(current.config)
        overrides = dict(config_overrides)
        if sampler is not None and isinstance(current, UnifiedScheduler) and sampler != cfg.get("sampler"):
            overrides["sampler_options"] = {}  # the recorded options belong to the recorded sampler
        if user_options:
            base = overrides.get(
                "sampler_options", cfg.get("sampler_options") if isinstance(current, UnifiedScheduler) else {}
            )
            overrides["sampler_options"] = {**(base or {}), **user_options}
        if sampler is not None:
            overrides["sampler"] = sampler
        pipe.scheduler = UnifiedScheduler.from_config(cfg, **overrides)
    if device is not None:
        pipe = pipe.to(device)
    return pipe


__all__ = ["load_pipeline"]

"""``unisde plugins``: every registered sampler, parameterisation, schedule, … with who registered it, then the
registrations that were ignored (a name registered twice) and the plugins that were skipped (they raised)."""

help = "list registered samplers, parameterisations and schedules with their distribution and version"


def add_arguments(parser):
    pass


def _note(obj) -> str:
    """Where a sampler runs when not everywhere: adaptive step size, or needing the unconditional x̂0 (CFG++)."""
    if getattr(obj, "adaptive", False):
        return "adaptive steps: unisde.sample, not UnifiedScheduler"
    if getattr(obj, "needs_uncond", False):
        return "needs the unconditional x̂0 (CFG++): unisde.sample, not UnifiedScheduler"
    return ""


def run(args):
    import warnings

    from unisde.plugins import plugin_conflicts, plugin_failures, plugin_table

    with warnings.catch_warnings():  # reported below, one line each, instead of as warnings
        warnings.simplefilter("ignore", RuntimeWarning)
        table, conflicts, failures = plugin_table(), plugin_conflicts(), plugin_failures()
    rows = [
        (kind, e.name, ", ".join(e.aliases), e.distribution, e.version, e.plugin, _note(e.obj)) for kind, e in table
    ]
    header = ("kind", "name", "aliases", "distribution", "version", "plugin", "runs")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    if conflicts:
        print(f"\nconflicts ({len(conflicts)}): the first registration is kept (a built-in one before any plugin's)")
        for c in conflicts:
            print(
                f"  {c.kind} {c.name!r}: kept plugin {c.kept_plugin!r} ({c.kept_distribution}), ignored plugin "
                f"{c.ignored_plugin!r} ({c.ignored_distribution})"
            )
    if failures:
        print(f"\nskipped plugins ({len(failures)}):")
        for f in failures:
            print(f"  {f.plugin} ({f.distribution}) at {f.stage}: {f.error}")
    return 0

"""``unisde plugins``: every registered sampler, parameterisation and schedule, with who registered it."""

help = "list registered samplers, parameterisations and schedules with their distribution and version"


def add_arguments(parser):
    pass


def run(args):
    from unisde.plugins import plugin_table

    rows = [(kind, e.name, ", ".join(e.aliases), e.distribution, e.version, e.plugin) for kind, e in plugin_table()]
    header = ("kind", "name", "aliases", "distribution", "version", "plugin")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0

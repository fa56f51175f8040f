"""Samplers: each a plugin registered through :func:`unisde_register_samplers`."""

from ..plugins import hookimpl

BUILTIN_SAMPLERS: tuple = ()


@hookimpl
def unisde_register_samplers(register):
    for cls in BUILTIN_SAMPLERS:
        register(cls)

"""Subcommands of the ``unisde`` CLI (see :mod:`unisde.cli`)."""

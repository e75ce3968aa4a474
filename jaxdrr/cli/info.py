"""``jaxdrr info [CT]``: a volume's shape, spacing, HU range and world box, as text."""

from __future__ import annotations

import argparse

import jaxdrr
from jaxdrr.cli.common import CtOptions, HelpFormatter, add_ct_options, ct_selection, long_step

CT_OPTIONS = CtOptions(positional=True)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``info`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "info",
        help="print a volume's shape, spacing, HU range and world box",
        description="Print a CT's shape, spacing, HU range and world box (and the options that "
        "select it, as every jaxdrr command records them).",
        formatter_class=HelpFormatter,
    )
    add_ct_options(p, CT_OPTIONS)
    return p


def run(args) -> int:
    """Runs ``jaxdrr info``; returns the process exit code."""
    selection = ct_selection(args)
    with long_step(f"loading {selection.describe()}"):
        volume = selection.load()
    name = selection.path if selection.path is not None else selection.describe()
    print(jaxdrr.format_volume_info(volume, name=name))
    print(f"select it with: {selection.command_line()}")
    return 0

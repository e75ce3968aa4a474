"""The ``jaxdrr`` command line: the parser with its sub-commands, and the dispatch to them.

    jaxdrr render [--ct CT | --phantom pelvis|chest|abdomen|limb|analytic] [--lao A ...] [--cran B ...]
                  --out xray.png [--save-npz xray.npz]
    jaxdrr info CT
    jaxdrr register --ct CT --xray xray.npz --out pose.json
    jaxdrr track --view 'FRAMES*.tif:CALIB.txt' ... --volume NAME=STACK.tif ... --out track.json
    jaxdrr mc [--ct CT] --photons 1e8 --out mc.npz
    jaxdrr segment CT --out materials.nii.gz [--method vnet|thresholds|labels] [--labels SEG --mapping M]
    jaxdrr dataset --config SPEC --out DIR      (jaxdrr dataset init SPEC: an example spec)

Each sub-command is a module of :mod:`jaxdrr.cli` with ``add_parser(subparsers)`` and
``run(args) -> exit code``; the options they share are declared once in :mod:`jaxdrr.cli.common`.

Errors: a bad option (argparse), bad input (:class:`jaxdrr.JaxdrrError`: a missing or corrupt
file, an impossible geometry, an out-of-range setting, an unwritable output), an operating-system
error (:class:`OSError`: permissions, a full disk) or a missing optional dependency is reported as
one line ``jaxdrr <command>: error: <message>`` on stderr with exit code 2, no traceback. The
commands check their options, inputs and outputs before any computation, so such an error comes
first and leaves no output behind. ``--debug`` (or ``JAXDRR_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

import jaxdrr
from jaxdrr._compile_cache import DISABLE_ENV, enable_compile_cache
from jaxdrr.cli import dataset, info, mc, register, render, segment, track
from jaxdrr.errors import JaxdrrError
from jaxdrr.ops import project_backend

DEBUG_HELP = "show the Python traceback of an error (also: JAXDRR_DEBUG=1)"
NO_COMPILE_CACHE_HELP = (
    f"compile from scratch: neither read nor write the persistent compilation cache (also: {DISABLE_ENV}=1; "
    "the cache is in $XDG_CACHE_HOME/jaxdrr/jax, default ~/.cache/jaxdrr/jax)"
)

# In the order of `jaxdrr --help`.
COMMANDS = {
    "render": render,
    "info": info,
    "register": register,
    "track": track,
    "mc": mc,
    "segment": segment,
    "dataset": dataset,
}


def version_string() -> str:
    """jaxdrr, jax and Python versions, and the projector backend this machine would use."""
    name, why = project_backend()
    return (
        f"jaxdrr {jaxdrr.__version__} (jax {jax.__version__}, Python {sys.version.split()[0]})\n"
        f"projector: {name} ({why})"
    )


class VersionAction(argparse.Action):
    """``--version``: computed when asked (it initialises JAX's backend and the native library)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_string())
        parser.exit()


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (``jaxdrr render: error: ...``), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxdrr`` parser with every sub-command."""
    parser = Parser(prog="jaxdrr", description="Realistic, differentiable X-ray simulation from CT.")
    parser.add_argument("--version", action=VersionAction, help="show versions and the projector backend")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    parser.add_argument("--no-compile-cache", action="store_true", help=NO_COMPILE_CACHE_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS.values():
        sub = command.add_parser(subparsers)
        # SUPPRESS: an absent sub-command flag must not reset ``jaxdrr --debug CMD``.
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        sub.add_argument(
            "--no-compile-cache", action="store_true", default=argparse.SUPPRESS, help=NO_COMPILE_CACHE_HELP
        )
    return parser


def debug_requested(args) -> bool:
    """``--debug`` was given or the environment sets ``JAXDRR_DEBUG`` to 1."""
    return bool(getattr(args, "debug", False)) or os.environ.get("JAXDRR_DEBUG", "") == "1"


def configure_compile_cache(args) -> None:
    """Turns on JAX's persistent compilation cache unless ``--no-compile-cache`` or the environment says no.

    The option is passed on to child processes (``dataset --workers``) through the environment.
    An unusable cache directory costs one line on stderr, never the command.
    """
    if getattr(args, "no_compile_cache", False):
        os.environ[DISABLE_ENV] = "1"
        return
    status = enable_compile_cache()
    if status.problem:
        print(
            f"jaxdrr: compilation cache off: {status.problem} ({DISABLE_ENV}=1 silences this)",
            file=sys.stderr,
        )


def error_message(exc: BaseException) -> str:
    """One line naming the problem (an OSError as "reason: file", as the shell says it)."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        text = f"{exc.strerror}: {exc.filename}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


def main(argv=None) -> int:
    """Runs ``jaxdrr ARGV`` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    command = COMMANDS[args.command]
    configure_compile_cache(args)  # before anything compiles
    try:
        return command.run(args)
    except KeyboardInterrupt:
        print(f"jaxdrr {args.command}: interrupted", file=sys.stderr)
        return 130
    except (JaxdrrError, OSError, ImportError) as exc:
        if debug_requested(args):
            raise
        print(f"jaxdrr {args.command}: error: {error_message(exc)}", file=sys.stderr)
        return 2

"""The ``jaxdrr`` command line (``jaxdrr = "jaxdrr.cli:main"``, ``python -m jaxdrr``).

A thin layer over the library, in three tiers (each imports only from the tiers below it):

* :mod:`jaxdrr.cli.common`: the option groups and loaders several sub-commands share (CT, C-arm
  geometry, spectrum, materials, output paths), each declared once;
* one module per sub-command (:mod:`~jaxdrr.cli.render`, :mod:`~jaxdrr.cli.info`,
  :mod:`~jaxdrr.cli.register`, :mod:`~jaxdrr.cli.mc`, :mod:`~jaxdrr.cli.segment`,
  :mod:`~jaxdrr.cli.dataset`), each with ``add_parser(subparsers)`` and ``run(args)``;
* :mod:`jaxdrr.cli.main`: the parser and the dispatch, :func:`main` and :func:`build_parser`.

Nothing in the library imports this package.
"""

from jaxdrr.cli.main import build_parser, main

__all__ = ["main", "build_parser"]

"""``python -m jaxdrr.cli``: the same command line as the ``jaxdrr`` script."""

import sys

from jaxdrr.cli import main

sys.exit(main())

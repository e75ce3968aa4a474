"""Prints the pinned ruff requirement from pyproject.toml's `lint` extra (one source of the pin)."""

import pathlib
import re

text = pathlib.Path(__file__).resolve().parent.parent.joinpath("pyproject.toml").read_text()
print(re.search(r'lint = \["([^"]+)"\]', text).group(1))

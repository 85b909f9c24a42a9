"""The ``graphopt`` command line (see :mod:`graphopt.cli.main`)."""
from graphopt.cli.main import main

__all__ = ["main"]

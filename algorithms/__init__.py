"""The algorithm units (algorithms/base.py says what a unit is). Importing the package registers every
module in it, so adding an algorithm is adding its file: no list to edit."""

import importlib
import pkgutil

from algorithms.base import (
    ALGORITHMS,
    Algorithm,
    algorithm_class,
    default_algorithm,
    register_algorithm,
    unregistered,
)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["ALGORITHMS", "Algorithm", "algorithm_class", "default_algorithm", "register_algorithm", "unregistered"]

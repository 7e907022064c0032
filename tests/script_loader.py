"""Import a file from benchmarks/ or scripts/ (folders that are not packages) as a module, by path,
so the tests run under a bare `pytest` from any working directory."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from cluster.config import REPO_ROOT


def load_script(relative_path: str) -> ModuleType:
    path = REPO_ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as importlib's recipe does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module

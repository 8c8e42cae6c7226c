"""Load a script of this repository (train.py, evaluate.py, scripts/*.py) as a module, for tests of its CLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """``path`` executed as module ``name``, registered in ``sys.modules`` first: dataclasses look their
    module up there while the class is built."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod

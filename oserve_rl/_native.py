"""Which simulator core runs: the compiled modules or their Python sources.

``setup.py`` compiles the per-request hot path with Cython (the modules in
``COMPILED``, typed by the ``.pxd`` beside each) and stamps each build with the
SHA-256 of its ``.py`` and ``.pxd``. At import, before any of them loads, this
module checks the stamps: if every compiled module matches its sources, Python
imports the compiled ones (extension modules come first on the import path);
otherwise, or with ``OSERVE_RL_PURE_PYTHON=1``, a finder makes all of them load
from their ``.py`` files, so an edited source never runs as a stale build and
compiled and Python modules are never mixed (they share C types).

    >>> import oserve_rl
    >>> oserve_rl.native_status()["core"] in ("compiled", "python")
    True

Standard library only: ``setup.py`` loads it by path to stamp its builds.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import warnings
from pathlib import Path

# setup.py builds exactly these (it reads this tuple).
COMPILED = (
    "oserve_rl.perf.kernel", "oserve_rl.sched.latency", "oserve_rl.sim.engine", "oserve_rl.sim.kv_cache",
    "oserve_rl.sim.router",
)
PURE_ENV = "OSERVE_RL_PURE_PYTHON"
_PACKAGE_DIR = Path(__file__).resolve().parent
_status: dict[str, object] = {"core": "python", "reason": "not checked yet", "modules": list(COMPILED)}


def module_base(module: str, package_dir: Path = _PACKAGE_DIR) -> Path:
    """``oserve_rl.sim.engine`` -> ``<package_dir>/sim/engine`` (no suffix)."""
    parts = module.split(".")
    return package_dir.joinpath(*parts[1:])


def source_sha256(module: str, package_dir: Path = _PACKAGE_DIR) -> str:
    """What a compiled build of ``module`` must have been built from: its ``.py`` and ``.pxd``."""
    h = hashlib.sha256()
    base = module_base(module, package_dir)
    for suffix in (".py", ".pxd"):
        p = base.with_name(base.name + suffix)
        h.update(suffix.encode() + b"\0" + (p.read_bytes() if p.exists() else b""))
    return h.hexdigest()


def compiled_file(module: str, package_dir: Path = _PACKAGE_DIR) -> Path | None:
    base = module_base(module, package_dir)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = base.with_name(base.name + suffix)
        if p.exists():
            return p
    return None


def check_builds(package_dir: Path = _PACKAGE_DIR) -> tuple[list[str], list[str]]:
    """(modules with no compiled build, modules whose build's stamp does not match their sources)."""
    missing, stale = [], []
    for m in COMPILED:
        so = compiled_file(m, package_dir)
        if so is None:
            missing.append(m)
            continue
        stamp = so.with_name(so.name + ".src-sha256")
        if not stamp.exists() or stamp.read_text().strip() != source_sha256(m, package_dir):
            stale.append(m)
    return missing, stale


class _SourceFinder(importlib.abc.MetaPathFinder):
    """Loads the ``COMPILED`` modules from their ``.py`` files even where a compiled build sits beside them."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in COMPILED:
            return None
        base = module_base(fullname)
        return importlib.util.spec_from_file_location(fullname, str(base.with_name(base.name + ".py")))


def select() -> None:
    """Decide once per process, before any compiled module is imported (``oserve_rl/__init__.py``)."""
    if any(m in sys.modules for m in COMPILED) or any(isinstance(f, _SourceFinder) for f in sys.meta_path):
        return
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        reason = f"{PURE_ENV} is set"
    else:
        missing, stale = check_builds()
        if not missing and not stale:
            _status.update(core="compiled", reason="compiled modules match their sources")
            return
        if stale:
            reason = (f"the compiled build of {', '.join(stale)} is older than its sources; rebuild it with "
                      "`pip install -e .` (or `python setup.py build_ext --inplace`)")
            warnings.warn(f"oserve_rl: {reason}. Running the pure-Python simulator core meanwhile (several times "
                          "slower).", stacklevel=3)
        elif len(missing) < len(COMPILED):
            reason = f"{', '.join(missing)} not compiled (the others are, but they only run together)"
        else:
            reason = "not compiled (no C compiler or Cython when it was installed)"
    sys.meta_path.insert(0, _SourceFinder())
    _status.update(core="python", reason=reason)


def native_status() -> dict[str, object]:
    """``{"core": "compiled" | "python", "reason": ..., "modules": [...]}`` for this process."""
    return dict(_status)

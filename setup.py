"""Builds the optional compiled core (Cython); everything else is in pyproject.toml.

The simulator's per-request hot path (the modules in ``oserve_rl/_native.py``'s
``COMPILED``: the engine, its KV pool, the routers, the iteration-cost kernel and the
p99 proxy) is plain Python that Cython compiles using the types in
the ``.pxd`` file beside each module. The ``.py`` files stay the one source of
the rules: without a C compiler the build only warns and the same code runs as
Python, several times slower (``python -m oserve_rl bench env`` says which).
Each compiled module gets a ``.src-sha256`` stamp of its sources, and
``oserve_rl/_native.py`` falls back to the sources when a stamp no longer
matches (an edited ``.py`` with a stale build), instead of running old code.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


def _native():
    """oserve_rl/_native.py (standard library only), loaded by path: the package's dependencies may not be
    installed yet in the build environment. One list of compiled modules and one stamp, for both sides."""
    spec = importlib.util.spec_from_file_location("_oserve_rl_native", ROOT / "oserve_rl" / "_native.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


NATIVE = _native()


class OptionalBuildExt(build_ext):
    """Compile where a C compiler works; otherwise warn and leave the pure-Python modules in charge."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # noqa: BLE001 - any compiler failure means "run as Python"
            print(f"warning: oserve-rl's compiled core was not built ({e}); the simulator runs as pure Python",
                  file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # noqa: BLE001
            print(f"warning: {ext.name} was not compiled ({e}); it runs as pure Python", file=sys.stderr)
            return
        Path(self.get_ext_fullpath(ext.name) + ".src-sha256").write_text(
            NATIVE.source_sha256(ext.name, ROOT / "oserve_rl") + "\n")

    # The stamp travels with its build: into wheels (outputs), and beside the sources for in-place and
    # editable builds (setuptools copies the build there).
    def get_outputs(self) -> list[str]:
        return super().get_outputs() + [self.get_ext_fullpath(e.name) + ".src-sha256" for e in self.extensions]

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        for built, inplace in self._stamp_mapping():
            if Path(built).exists():
                self.copy_file(built, inplace, level=self.verbose)

    def _get_output_mapping(self):
        yield from super()._get_output_mapping()
        if self.inplace:
            yield from self._stamp_mapping()

    def _stamp_mapping(self):
        build_py = self.get_finalized_command("build_py")
        for ext in self.extensions:
            inplace_file, regular_file = self._get_inplace_equivalent(build_py, ext)
            yield regular_file + ".src-sha256", inplace_file + ".src-sha256"


def extensions() -> list[Extension]:
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is not installed; oserve-rl's simulator runs as pure Python", file=sys.stderr)
        return []
    exts = [Extension(m, [m.replace(".", "/") + ".py"]) for m in NATIVE.COMPILED]
    # annotation_typing off: the .pxd files carry the C types; annotations stay documentation (an `int`
    # annotation would otherwise reject numpy integers).
    return cythonize(exts, compiler_directives={"language_level": 3, "annotation_typing": False},
                     quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})

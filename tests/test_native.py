"""The compiled simulator core (setup.py, oserve_rl/_native.py): same results as its Python sources, and a
stale build never runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import oserve_rl
from oserve_rl import _native

ROOT = Path(__file__).resolve().parents[1]


def _run(code_or_script: list[str], pure: bool) -> str:
    env = dict(os.environ)
    env.pop(_native.PURE_ENV, None)
    if pure:
        env[_native.PURE_ENV] = "1"
    out = subprocess.run([sys.executable, *code_or_script], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_compiled_core_gives_the_same_results_as_its_sources():
    """The proof that compiling changes speed only: per-request outcomes of simulations (fast and exact mode,
    switches, migrations, prefix cache, weighted routing) and a Deploy-v0 episode, bit for bit."""
    compiled = json.loads(_run(["scripts/core_digest.py", "--requests", "2000", "--env-steps", "6"], pure=False))
    if compiled["core"] != "compiled":
        pytest.skip(f"no compiled core in this install: {oserve_rl.native_status()['reason']}")
    pure = json.loads(_run(["scripts/core_digest.py", "--requests", "2000", "--env-steps", "6"], pure=True))
    assert pure["core"] == "python"
    assert {k: v for k, v in compiled.items() if k != "core"} == {k: v for k, v in pure.items() if k != "core"}


def test_pure_python_switch_loads_every_module_from_source():
    code = ("import oserve_rl, oserve_rl.sim.engine as e, oserve_rl.sim.router as r, oserve_rl.perf.kernel as k, "
            "oserve_rl.sched.latency as l; print(oserve_rl.native_status()['core'], "
            "all(m.__file__.endswith('.py') for m in (e, r, k, l)))")
    assert _run(["-c", code], pure=True).split() == ["python", "True"]


def _fake_package(tmp_path: Path, stamp: str | None) -> Path:
    pkg = tmp_path / "oserve_rl"
    suffix = _native.importlib.machinery.EXTENSION_SUFFIXES[0]
    for m in _native.COMPILED:
        base = _native.module_base(m, pkg)
        base.parent.mkdir(parents=True, exist_ok=True)
        base.with_name(base.name + ".py").write_text("x = 1\n")
        so = base.with_name(base.name + suffix)
        so.write_bytes(b"")
        if stamp is not None:
            so.with_name(so.name + ".src-sha256").write_text(stamp if stamp else _native.source_sha256(m, pkg))
    return pkg


def test_builds_are_current_only_while_their_stamps_match_the_sources(tmp_path):
    pkg = _fake_package(tmp_path, stamp="")  # "" -> the right stamps
    assert _native.check_builds(pkg) == ([], [])
    engine = _native.module_base("oserve_rl.sim.engine", pkg)
    engine.with_name("engine.py").write_text("x = 2  # edited after the build\n")
    assert _native.check_builds(pkg) == ([], ["oserve_rl.sim.engine"])
    engine.with_name("engine.pxd").write_text("# a new type declaration\n")  # the .pxd counts too
    assert _native.check_builds(pkg)[1] == ["oserve_rl.sim.engine"]


def test_builds_without_stamps_count_as_stale_and_missing_builds_as_missing(tmp_path):
    pkg = _fake_package(tmp_path, stamp=None)
    assert _native.check_builds(pkg) == ([], list(_native.COMPILED))
    for so in pkg.rglob("*" + _native.importlib.machinery.EXTENSION_SUFFIXES[0]):
        so.unlink()
    assert _native.check_builds(pkg) == (list(_native.COMPILED), [])


def test_setup_py_builds_exactly_the_modules_native_checks():
    text = (ROOT / "setup.py").read_text()
    assert "NATIVE.COMPILED" in text and "NATIVE.source_sha256" in text
    for m in _native.COMPILED:
        assert _native.module_base(m, ROOT / "oserve_rl").with_suffix(".pxd").exists(), m

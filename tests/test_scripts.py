"""Research scripts whose helpers other scripts or docs rely on."""

import importlib.util
import sys
from pathlib import Path

import numpy as np

from oserve_rl.catalog import get_model
from oserve_rl.policy import Scenario

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_rehearsal_traffic_follows_the_type_model_and_fits_the_context():
    rehearse = _load("rehearse_rank")
    data = Scenario(cluster="h100x8", model="llama-2-70b", trace="azure-code", duration_s=300).build(0)
    rates = np.array([1.0, 2.0, 0.5, 4.0])
    synth = rehearse.synthetic_episode(data, rates, duration_s=400.0, seed=3)
    tr = synth.trace
    assert synth.duration_s == 400.0 and len(synth.types) == len(tr)
    assert np.all(np.diff(tr.arrival_s) >= 0) and tr.arrival_s.max() < 400.0
    assert np.all(tr.input_tokens + tr.output_tokens <= get_model(data.model).max_context)
    counts = np.bincount(synth.types, minlength=4)
    # Poisson counts: within 5 standard deviations of rate x duration for every type.
    assert np.all(np.abs(counts - rates * 400) <= 5 * np.sqrt(rates * 400))
    # Lengths: per type, the outputs' geometric mean is near the typer's centre. Pairs over the context are
    # redrawn, not cut short: the types with prompts near the context keep their outputs too.
    for j in range(4):
        geo = np.exp(np.log(tr.output_tokens[synth.types == j]).mean())
        assert 0.6 < geo / data.typer.centers_tokens[j, 1] < 1.4, j
    # The same seed gives the same traffic.
    again = rehearse.synthetic_episode(data, rates, duration_s=400.0, seed=3)
    assert np.array_equal(again.trace.arrival_s, tr.arrival_s) and np.array_equal(again.types, synth.types)

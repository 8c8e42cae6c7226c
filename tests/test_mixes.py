"""Synthetic type-mix traces (oserve_rl.workload.mixes): shapes, seeds, the CV definition, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from oserve_rl.errors import ConfigError
from oserve_rl.workload import RequestTyper, Trace, load_trace
from oserve_rl.workload.mixes import (
    SHIFT_LEVELS,
    decode_order,
    mix_cv,
    mix_trace,
    shares_with_cv,
    shift_segments,
    shift_shares,
    shift_trace,
    skew_trace,
)


@pytest.fixture(scope="module")
def base() -> Trace:
    return load_trace("azure-conv").head(3000)


@pytest.fixture(scope="module")
def typer(base) -> RequestTyper:
    return RequestTyper.fit(base, k=4, seed=0)


def test_mix_trace_follows_segments_rates_and_shares(base, typer):
    shares_a, shares_b = [0.7, 0.1, 0.1, 0.1], [0.0, 0.0, 0.2, 0.8]
    tr = mix_trace(base, typer, [(600.0, 10.0, shares_a), (300.0, 4.0, shares_b)], seed=3)
    assert np.all(np.diff(tr.arrival_s) >= 0) and tr.arrival_s[0] >= 0 and tr.arrival_s[-1] < 900.0
    first = tr.arrival_s < 600.0
    # Poisson counts: mean 6000 and 1200, std ~77 and ~35
    assert abs(first.sum() - 6000) < 400 and abs((~first).sum() - 1200) < 200
    types = typer.predict(tr)  # every request is a base request of the drawn type, so the typer recovers it
    frac_a = np.bincount(types[first], minlength=4) / first.sum()
    frac_b = np.bincount(types[~first], minlength=4) / (~first).sum()
    np.testing.assert_allclose(frac_a, shares_a, atol=0.03)
    np.testing.assert_allclose(frac_b, shares_b, atol=0.04)
    assert frac_b[0] == 0 and frac_b[1] == 0
    # lengths are real: each (input, output) pair exists in the base trace
    pairs = set(zip(base.input_tokens.tolist(), base.output_tokens.tolist()))
    assert all(p in pairs for p in zip(tr.input_tokens[:500].tolist(), tr.output_tokens[:500].tolist()))
    assert tr.source == "synthetic" and "mix_trace" in tr.notes[-1]


def test_mix_trace_is_seeded(base, typer):
    segs = [(120.0, 5.0, [0.25, 0.25, 0.25, 0.25])]
    a, b = mix_trace(base, typer, segs, seed=1), mix_trace(base, typer, segs, seed=1)
    c = mix_trace(base, typer, segs, seed=2)
    np.testing.assert_array_equal(a.arrival_s, b.arrival_s)
    np.testing.assert_array_equal(a.input_tokens, b.input_tokens)
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)


def test_gamma_arrivals_are_burstier_than_poisson(base, typer):
    segs = [(2000.0, 5.0, [0.25, 0.25, 0.25, 0.25])]
    gaps_p = np.diff(mix_trace(base, typer, segs, seed=0).arrival_s)
    gaps_g = np.diff(mix_trace(base, typer, segs, seed=0, arrival_cv=3.0).arrival_s)
    assert gaps_p.std() / gaps_p.mean() == pytest.approx(1.0, abs=0.1)
    assert gaps_g.std() / gaps_g.mean() > 2.0


@pytest.mark.parametrize("cv", [0.0, 0.112, 0.4, 0.688, 1.2, math.sqrt(3)])
@pytest.mark.parametrize("seed", [0, 1, 7])
def test_shares_with_cv_hits_the_cv(cv, seed):
    s = shares_with_cv(cv, 4, seed)
    assert s.shape == (4,) and s.min() >= 0 and s.sum() == pytest.approx(1.0, abs=1e-12)
    assert mix_cv(s) == pytest.approx(cv, abs=1e-6)
    np.testing.assert_array_equal(s, shares_with_cv(cv, 4, seed))


def test_shares_with_cv_keeps_its_direction_as_cv_grows():
    low, high = shares_with_cv(0.1, 5, seed=4), shares_with_cv(0.3, 5, seed=4)
    np.testing.assert_allclose(high - 0.2, 3 * (low - 0.2), atol=1e-12)


def test_mix_cv_definition():
    assert mix_cv([0.25] * 4) == 0.0
    assert mix_cv([1.0, 0.0, 0.0, 0.0]) == pytest.approx(math.sqrt(3))
    assert mix_cv([0.4, 0.4, 0.1, 0.1]) == pytest.approx(0.6)


def test_shift_levels_move_further_apart():
    tv = []
    for level in SHIFT_LEVELS:
        a, b = shift_shares(f"T{level}")
        assert mix_cv(a) == pytest.approx(SHIFT_LEVELS[level]) and mix_cv(b) == pytest.approx(SHIFT_LEVELS[level])
        assert a[:2].sum() > b[:2].sum()  # A favours the shorter types, B the longer ones
        tv.append(0.5 * np.abs(a - b).sum())
    assert tv == sorted(tv) and tv[0] > 0
    np.testing.assert_allclose(shift_shares(4)[0], [0.4, 0.4, 0.1, 0.1])
    np.testing.assert_allclose(shift_shares(4, order=[2, 0, 3, 1])[0], [0.4, 0.1, 0.4, 0.1])
    segs = shift_segments("T2", 3.0, 700.0, segment_s=300.0)
    assert [d for d, _, _ in segs] == [300.0, 300.0, 100.0]
    np.testing.assert_array_equal(segs[0][2], segs[2][2])


def test_skew_and_shift_traces(base):
    skew = skew_trace(base, 0.5, 8.0, 300.0, seed=0)
    assert 2000 < len(skew) < 2800 and skew.arrival_s[-1] < 300.0
    shift = shift_trace(base, "T4", 8.0, 600.0, seed=0, segment_s=300.0)
    typer = RequestTyper.fit(base, k=4, seed=0)
    types = typer.predict(shift)
    first = shift.arrival_s < 300.0
    light = decode_order(typer)[:2]  # the two types with the shortest centre outputs
    assert typer.centers_tokens[light, 1].max() <= np.delete(typer.centers_tokens[:, 1], light).min()
    short_first = np.isin(types[first], light).mean()
    short_second = np.isin(types[~first], light).mean()
    assert short_first == pytest.approx(0.8, abs=0.04) and short_second == pytest.approx(0.2, abs=0.04)


@pytest.mark.parametrize("segments, match", [
    ([(60.0, 5.0, [0.5, 0.5, 0.5, -0.5])], ">= 0"),
    ([(60.0, 5.0, [0.3, 0.3, 0.3, 0.3])], "sum to 1"),
    ([(60.0, 5.0, [0.5, 0.5])], "one share per type"),
    ([(60.0, 0.0, [0.25] * 4)], "rate_rps must be a positive"),
    ([(60.0, -2.0, [0.25] * 4)], "rate_rps must be a positive"),
    ([(0.0, 5.0, [0.25] * 4)], "duration_s must be a positive"),
    ([(60.0, 5.0)], r"\(duration_s, rate_rps, shares\)"),
    ([], "at least one segment"),
])
def test_mix_trace_rejects_bad_segments(base, typer, segments, match):
    with pytest.raises(ConfigError, match=match):
        mix_trace(base, typer, segments)


def test_a_share_for_a_type_the_base_lacks_is_an_error(base, typer):
    types = typer.predict(base)
    keep = types == 0
    only_type0 = Trace(base.arrival_s[keep], base.input_tokens[keep], base.output_tokens[keep], "type0", "test")
    with pytest.raises(ConfigError, match=r"type\(s\) \[1\]"):
        mix_trace(only_type0, typer, [(60.0, 5.0, [0.5, 0.5, 0.0, 0.0])])
    assert len(mix_trace(only_type0, typer, [(60.0, 5.0, [1.0, 0.0, 0.0, 0.0])])) > 0


def test_bad_cv_levels_and_arrival_cv(base, typer):
    with pytest.raises(ConfigError, match="out of reach"):
        shares_with_cv(1.8, 4)
    with pytest.raises(ConfigError, match="out of reach"):
        shares_with_cv(-0.1, 4)
    with pytest.raises(ConfigError, match="num_types"):
        shares_with_cv(0.1, 1)
    with pytest.raises(ConfigError, match="valid levels are T1, T2, T3, T4"):
        shift_shares("T5")
    with pytest.raises(ConfigError, match="permutation"):
        shift_shares("T2", 4, order=[0, 1, 1, 2])
    with pytest.raises(ConfigError, match="arrival_cv"):
        mix_trace(base, typer, [(60.0, 5.0, [0.25] * 4)], arrival_cv=0.0)
    with pytest.raises(ConfigError, match="rate_rps"):
        skew_trace(base, 0.3, 0.0, 60.0)

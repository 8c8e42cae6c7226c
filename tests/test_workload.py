"""Workload: loaders on the bundled traces, bad input, arrival processes, ServeGen, typing."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from oserve_rl.errors import ConfigError, OServeError, TraceError, UnknownNameError
from oserve_rl.workload import (
    Diurnal,
    GammaArrivals,
    Poisson,
    RequestTyper,
    Trace,
    assign_prefix_groups,
    bundled_path,
    detect_format,
    load_azure,
    load_mooncake,
    load_trace,
    parse_arrival,
    servegen_trace,
)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def azure_rows(n: int = 5, fmt: str = "2023") -> str:
    rows = []
    for i in range(n):
        if fmt == "2023":
            ts = f"2023-11-16 18:15:{10 + i:02d}.6805900"
        else:
            ts = f"2024-05-10 00:00:{10 + i:02d}.009930+00:00"
        rows.append(f"{ts},{100 + i},{10 + i}\n")
    return AZURE_HEADER + "".join(rows)


def mooncake_line(ts: int, inp: int = 600, out: int = 5, hashes: list[int] | None = None) -> str:
    rec = {"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": hashes if hashes is not None else [ts, ts + 1]}
    return json.dumps(rec) + "\n"


def simple_trace(n: int = 100, seed: int = 0) -> Trace:
    rng = np.random.default_rng(seed)
    return Trace(
        np.sort(rng.uniform(0, 100, n)), rng.integers(1, 4000, n), rng.integers(1, 500, n), name="t", source="test"
    )


# ------------------------------------------------------------ bundled traces
@pytest.mark.parametrize(
    ("name", "rows", "minutes"), [("azure-conv", 19_366, 58), ("azure-code", 8_819, 57), ("mooncake-synthetic", 3_993, 17)]
)
def test_bundled_trace_row_counts_match_readme(name: str, rows: int, minutes: int) -> None:
    trace = load_trace(name)
    assert len(trace) == rows
    assert round(trace.duration_s / 60) == minutes
    assert np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.input_tokens.min() > 0 and trace.output_tokens.min() > 0
    assert trace.notes == ()  # real files load without any fix-ups


def test_azure_conv_statistics_match_readme() -> None:
    trace = load_trace("azure-conv")
    assert trace.arrival_s[0] == 0.0
    assert trace.input_tokens.mean() == pytest.approx(1155, abs=1)
    assert trace.output_tokens.mean() == pytest.approx(211, abs=1)
    stats = trace.window_stats(600)
    assert stats["count"].sum() == len(trace)
    # README: mean output falls from ~260 to ~162 tokens across 10-minute windows.
    assert stats["output_mean"].iloc[0] == pytest.approx(260, abs=1)
    assert stats["output_mean"].min() == pytest.approx(162, abs=1)


def test_mooncake_prefix_hashes() -> None:
    trace = load_trace("mooncake-synthetic")
    assert trace.prefix_block_tokens == 512
    assert len(trace.prefix_hashes) == len(trace)
    blocks = np.array([len(h) for h in trace.prefix_hashes])
    assert np.array_equal(blocks, -(-trace.input_tokens // 512))
    assert all(h.dtype == np.uint64 for h in trace.prefix_hashes[:10])
    # Multi-turn conversations share prefixes: some hash is used by more than one request.
    flat = np.concatenate(trace.prefix_hashes)
    assert len(np.unique(flat)) < len(flat)


def test_mooncake_jitter_is_seeded_and_bounded() -> None:
    base = load_trace("mooncake-synthetic")
    a = load_mooncake(bundled_path("mooncake-synthetic"), jitter_s=3.0, seed=1)
    b = load_mooncake(bundled_path("mooncake-synthetic"), jitter_s=3.0, seed=1)
    c = load_mooncake(bundled_path("mooncake-synthetic"), jitter_s=3.0, seed=2)
    assert np.array_equal(a.arrival_s, b.arrival_s) and not np.array_equal(a.arrival_s, c.arrival_s)
    assert np.all(np.diff(a.arrival_s) >= 0)
    assert sorted(a.input_tokens.tolist()) == sorted(base.input_tokens.tolist())
    assert a.arrival_s.min() >= base.arrival_s.min() and a.arrival_s.max() < base.arrival_s.max() + 3.0
    assert any("jitter" in n for n in a.notes)
    # Hashes travel with their request through the re-sort.
    for i in range(0, len(a), 500):
        assert len(a.prefix_hashes[i]) == -(-a.input_tokens[i] // 512)


def test_azure_2024_format(tmp_path: Path) -> None:
    path = write(tmp_path, "azure2024.csv", azure_rows(5, "2024"))
    trace = load_trace(path)
    assert detect_format(path) == "azure"
    assert len(trace) == 5
    assert np.allclose(trace.arrival_s, np.arange(5.0))
    assert trace.input_tokens.tolist() == [100, 101, 102, 103, 104]


def test_detects_length_pool_and_mooncake(tmp_path: Path) -> None:
    assert detect_format(bundled_path("sharegpt")) == "length_pool"
    assert detect_format(bundled_path("mooncake-synthetic")) == "mooncake"
    path = write(tmp_path, "pool.csv", "num_prefill_tokens,num_decode_tokens\n10,20\n30,40\n")
    trace = load_trace(path, arrival="poisson:2", n=5, order="file")
    assert trace.input_tokens.tolist() == [10, 30, 10, 30, 10]
    assert any("reused cyclically" in n for n in trace.notes)


def test_length_pool_names() -> None:
    for name in ("sharegpt", "arxiv"):
        trace = load_trace(name, arrival="poisson:5", n=2000, seed=3)
        assert len(trace) == 2000
        again = load_trace(name, arrival="poisson:5", n=2000, seed=3)
        assert np.array_equal(trace.input_tokens, again.input_tokens)
        assert np.array_equal(trace.arrival_s, again.arrival_s)
    with pytest.raises(ConfigError, match="arrival="):
        load_trace("sharegpt")


def test_unknown_name_and_option() -> None:
    with pytest.raises(UnknownNameError, match="azure-conv") as info:
        load_trace("azure-conversation")
    assert "azure-conv" in info.value.close
    with pytest.raises(ConfigError, match="unknown option"):
        load_trace("azure-conv", bogus=1)
    with pytest.raises(TraceError, match="no such trace file"):
        load_trace("/nonexistent/trace.csv")


# -------------------------------------------------------------- bad input
BAD_AZURE = [
    ("TIMESTAMP,ContextTokens\n2023-11-16 18:15:46.68,3\n", None, "GeneratedTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,x,3\n", 2, "ContextTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,12.5,3\n", 2, "ContextTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,0,3\n", 2, "ContextTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,5,-1\n", 2, "GeneratedTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,5,0\n", 2, "GeneratedTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,5,\n", 2, "GeneratedTokens"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\nyesterday,5,3\n", 2, "TIMESTAMP"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47,5,3\n2023-11-16 18:15:40,5,3\n", 3, "TIMESTAMP"),
    (AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2024-05-10 00:00:00.009930+00:00,5,3\n", 2, "TIMESTAMP"),
]


@pytest.mark.parametrize(("text", "row", "field"), BAD_AZURE)
def test_bad_azure_rows_name_file_row_field(tmp_path: Path, text: str, row: int | None, field: str) -> None:
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(TraceError) as info:
        load_azure(path)
    msg = str(info.value)
    assert str(path) in msg and repr(field) in msg
    if row is not None:
        assert f"data row {row} (line {row + 1})" in msg


def test_empty_traces(tmp_path: Path) -> None:
    for name, text in [("a.csv", AZURE_HEADER), ("b.csv", ""), ("c.jsonl", "\n\n")]:
        path = write(tmp_path, name, text)
        with pytest.raises(TraceError, match="empty"):
            (load_mooncake if name.endswith("jsonl") else load_azure)(path)


BAD_MOONCAKE = [
    (mooncake_line(0) + "{not json\n", 2, "(line)"),
    (mooncake_line(0) + '{"timestamp": 5, "output_length": 3, "hash_ids": [1]}\n', 2, "input_length"),
    (mooncake_line(0) + mooncake_line(5, inp="many"), 2, "input_length"),
    (mooncake_line(0) + mooncake_line(5, out=0), 2, "output_length"),
    (mooncake_line(0) + '{"timestamp": "noon", "input_length": 3, "output_length": 3, "hash_ids": [1]}\n', 2, "timestamp"),
    (mooncake_line(0) + mooncake_line(5, hashes=[1, -2]), 2, "hash_ids"),
    (mooncake_line(10) + mooncake_line(5), 2, "timestamp"),
    (mooncake_line(0) + '{"timestamp": 5, "input_length": 3, "output_length": 3}\n', 2, "hash_ids"),
]


@pytest.mark.parametrize(("text", "row", "field"), BAD_MOONCAKE)
def test_bad_mooncake_rows_name_file_row_field(tmp_path: Path, text: str, row: int, field: str) -> None:
    path = write(tmp_path, "bad.jsonl", text)
    with pytest.raises(TraceError) as info:
        load_mooncake(path)
    msg = str(info.value)
    assert str(path) in msg and repr(field) in msg and f"data row {row} (line {row})" in msg


def test_bad_length_pool(tmp_path: Path) -> None:
    path = write(tmp_path, "pool.csv", "num_prefill_tokens,num_decode_tokens\n10,20\n-3,40\n")
    with pytest.raises(TraceError, match=r"data row 2 \(line 3\), field 'num_prefill_tokens'"):
        load_trace(path, arrival="poisson:1", n=3)
    path = write(tmp_path, "nopool.csv", "prompt,answer\n10,20\n")
    with pytest.raises(TraceError, match="unrecognised trace format"):
        load_trace(path)


def test_skip_bad_rows_reports_and_limits(tmp_path: Path) -> None:
    text = AZURE_HEADER + (
        "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,x,3\n2023-11-16 18:15:48.00,5,0\n2023-11-16 18:15:49.00,5,7\n"
    )
    path = write(tmp_path, "some_bad.csv", text)
    with pytest.raises(TraceError, match=r"2 bad rows.*skip_bad_rows=1"):
        load_azure(path, skip_bad_rows=1)
    trace = load_azure(path, skip_bad_rows=2)
    assert len(trace) == 2 and trace.input_tokens.tolist() == [12, 5]
    assert any("skipped 2 bad rows" in n and "data rows 2, 3" in n for n in trace.notes)
    # zero_output='as_one' keeps the zero-output row and counts it.
    trace = load_azure(path, skip_bad_rows=1, zero_output="as_one")
    assert trace.output_tokens.tolist() == [3, 1, 7]
    assert any("GeneratedTokens = 0 counted as 1" in n for n in trace.notes)


def test_sort_option(tmp_path: Path) -> None:
    path = write(tmp_path, "unsorted.jsonl", mooncake_line(2000, inp=1) + mooncake_line(1000, inp=2) + mooncake_line(3000, inp=3))
    with pytest.raises(TraceError, match="sort=True"):
        load_mooncake(path)
    trace = load_mooncake(path, sort=True)
    assert trace.arrival_s.tolist() == [1.0, 2.0, 3.0]
    assert trace.input_tokens.tolist() == [2, 1, 3]
    assert [h.tolist() for h in trace.prefix_hashes] == [[1000, 1001], [2000, 2001], [3000, 3001]]
    assert any("sorted" in n for n in trace.notes)


def test_option_validation() -> None:
    with pytest.raises(ConfigError, match="skip_bad_rows"):
        load_azure(bundled_path("azure-conv"), skip_bad_rows=-1)
    with pytest.raises(ConfigError, match="zero_output"):
        load_azure(bundled_path("azure-conv"), zero_output="drop")  # type: ignore[arg-type]


# ---------------------------------------------------------------- arrivals
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("poisson:3", Poisson(3.0)),
        ("gamma:3:2.0", GammaArrivals(3.0, 2.0)),
        ("diurnal:3:0.5:86400", Diurnal(3.0, 0.5, 86400.0)),
    ],
)
def test_parse_arrival(spec: str, expected: object) -> None:
    assert parse_arrival(spec) == expected
    assert parse_arrival(spec).describe() == spec.replace("2.0", "2")


@pytest.mark.parametrize("spec", ["poison:3", "poisson", "poisson:x", "gamma:3", "poisson:-1", "diurnal:3:1.5:10", "gamma:3:0"])
def test_parse_arrival_rejects(spec: str) -> None:
    with pytest.raises(ConfigError):
        parse_arrival(spec)


def test_poisson_rate_and_cv() -> None:
    rng = np.random.default_rng(0)
    t = Poisson(4.0).sample(rng, n=40_000)
    gaps = np.diff(t)
    assert len(t) / t[-1] == pytest.approx(4.0, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)
    t = Poisson(4.0).sample(np.random.default_rng(1), duration_s=10_000)
    assert len(t) / 10_000 == pytest.approx(4.0, rel=0.03) and t.max() < 10_000


def test_gamma_rate_and_cv() -> None:
    for method in ("n", "duration"):
        rng = np.random.default_rng(5)
        proc = GammaArrivals(2.0, 3.0)
        t = proc.sample(rng, n=50_000) if method == "n" else proc.sample(rng, duration_s=25_000)
        gaps = np.diff(t)
        assert np.all(gaps >= 0)
        assert 1 / gaps.mean() == pytest.approx(2.0, rel=0.1)
        assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.1)


def test_diurnal_follows_rate_curve() -> None:
    proc = Diurnal(5.0, 0.8, 1000.0)
    t = proc.sample(np.random.default_rng(2), duration_s=20_000)
    assert len(t) / 20_000 == pytest.approx(5.0, rel=0.03)
    phase = (t % 1000.0) < 500.0  # sin > 0 half carries (1 + 2a/pi) / 2 of the load
    assert phase.mean() == pytest.approx((1 + 2 * 0.8 / np.pi) / 2, abs=0.02)
    n = proc.sample(np.random.default_rng(2), n=3000)
    assert len(n) == 3000 and np.all(np.diff(n) >= 0)


# ------------------------------------------------------- trace operations
def test_slice_rebase_head_scale() -> None:
    trace = load_trace("azure-conv")
    part = trace.slice(600, 1200)
    assert np.all((part.arrival_s >= 600) & (part.arrival_s < 1200))
    assert len(part) == int(((trace.arrival_s >= 600) & (trace.arrival_s < 1200)).sum())
    rebased = trace.slice(600, 1200, rebase=True)
    assert np.allclose(rebased.arrival_s, part.arrival_s - 600)
    assert part.rebase().arrival_s[0] == 0.0
    assert len(trace.head(10)) == 10 and len(trace.head(10**9)) == len(trace)
    fast = trace.scale_rate(2.0)
    assert fast.mean_rate_rps == pytest.approx(2 * trace.mean_rate_rps)
    assert np.array_equal(fast.output_tokens, trace.output_tokens)
    # Pieces of a partition add back up.
    cuts = [trace.slice(a, a + 600) for a in range(0, 3600, 600)]
    assert sum(len(c) for c in cuts) == len(trace)
    with pytest.raises(ConfigError):
        trace.scale_rate(0)
    with pytest.raises(ConfigError):
        trace.slice(10, 5)


def test_fitting_keeps_exactly_the_requests_within_the_context() -> None:
    trace = load_trace("azure-code")
    fit = trace.fitting(4096)
    total = trace.input_tokens + trace.output_tokens
    assert len(fit) == int((total <= 4096).sum()) < len(trace)  # Azure code has requests beyond 4,096 tokens
    assert np.all(fit.input_tokens + fit.output_tokens <= 4096)
    assert np.array_equal(fit.arrival_s, trace.arrival_s[total <= 4096])
    assert "fitting(4096)" in fit.notes[-1]
    with pytest.raises(ConfigError, match="max_tokens"):
        trace.fitting(1)


def test_trace_is_immutable_and_validated() -> None:
    trace = simple_trace()
    with pytest.raises(ValueError):
        trace.arrival_s[0] = 5.0
    with pytest.raises(TraceError):
        Trace(np.array([2.0, 1.0]), np.array([1, 1]), np.array([1, 1]), name="x", source="y")
    with pytest.raises(TraceError):
        Trace(np.array([1.0, 2.0]), np.array([1, 0]), np.array([1, 1]), name="x", source="y")


def test_with_arrivals_keeps_lengths() -> None:
    trace = load_trace("mooncake-synthetic")
    re_timed = trace.with_arrivals(Poisson(10.0), seed=4)
    assert np.array_equal(re_timed.input_tokens, trace.input_tokens)
    assert re_timed.prefix_hashes is not None and len(re_timed.prefix_hashes) == len(trace)
    assert re_timed.mean_rate_rps == pytest.approx(10.0, rel=0.1)
    longer = trace.with_arrivals(Poisson(10.0), seed=4, duration_s=1000)
    assert len(longer) > len(trace)
    assert np.array_equal(longer.input_tokens[len(trace) : 2 * len(trace)], trace.input_tokens[: len(trace)])
    assert any("cyclically" in n for n in longer.notes)
    via_name = load_trace("azure-code", arrival="gamma:3:2", seed=1)
    assert len(via_name) == 8_819 and via_name.mean_rate_rps == pytest.approx(3.0, rel=0.15)


def test_to_frame_and_window_stats() -> None:
    trace = load_trace("azure-code")
    frame = trace.to_frame()
    assert list(frame.columns) == ["arrival_s", "input_tokens", "output_tokens"] and len(frame) == len(trace)
    stats = trace.window_stats(60)
    assert stats["count"].sum() == len(trace)
    assert np.allclose(stats["rate_rps"], stats["count"] / 60)
    ok = stats["count"] > 0
    assert (stats.loc[ok, "input_p50"] <= stats.loc[ok, "input_p99"]).all()
    assert stats["share_long_output"].dropna().between(0, 1).all()


def test_prefix_groups_share_blocks_deterministically() -> None:
    trace = simple_trace(200)
    grouped = assign_prefix_groups(trace, [1024, 2000], share=0.5, seed=7)
    again = assign_prefix_groups(trace, [1024, 2000], share=0.5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(grouped.prefix_hashes, again.prefix_hashes, strict=True))
    assert grouped.prefix_block_tokens == 512
    extra = grouped.input_tokens - trace.input_tokens
    assert set(np.unique(extra)) <= {0, 1024, 2000}
    blocks = np.array([len(h) for h in grouped.prefix_hashes])
    assert np.array_equal(blocks, -(-grouped.input_tokens // 512))
    first = {}
    for tokens, hashes in zip(extra, grouped.prefix_hashes, strict=True):
        if tokens:
            shared = tokens // 512  # 2 blocks for 1024 tokens, 3 full blocks for 2000
            first.setdefault(tokens, hashes[:shared].tolist())
            assert hashes[:shared].tolist() == first[tokens]
    assert first[1024] != first[2000][:2]
    # Unshared blocks never collide across requests.
    tails = [h[t // 512 :] for t, h in zip(extra, grouped.prefix_hashes, strict=True)]
    flat = np.concatenate(tails)
    assert len(np.unique(flat)) == len(flat)


# ---------------------------------------------------------------- ServeGen
def test_servegen_shape_rate_and_seed() -> None:
    a = servegen_trace("m-large", start_s=3600, duration_s=3600, target_rps=20, seed=1)
    b = load_trace("servegen:m-large", start_s=3600, duration_s=3600, target_rps=20, seed=1)
    c = servegen_trace("m-large", start_s=3600, duration_s=3600, target_rps=20, seed=2)
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.output_tokens, b.output_tokens)
    assert not np.array_equal(a.input_tokens[:100], c.input_tokens[:100])
    assert a.arrival_s.min() >= 3600 and a.arrival_s.max() < 7200
    assert len(a) / 3600 == pytest.approx(20, rel=0.25)  # bursty clients: loose bound
    assert a.input_tokens.min() >= 1 and a.output_tokens.min() >= 1
    # Lengths in the ballpark of ServeGen's 6-hour mix for block 0 (mean_in 360, mean_out 301).
    assert 150 < a.input_tokens.mean() < 900 and 100 < a.output_tokens.mean() < 600
    assert any("model-level mix" in n for n in a.notes)


def test_servegen_rate_scale_and_models() -> None:
    small = servegen_trace("mm-image", duration_s=1200, rate_scale=1.0, seed=0)
    assert len(small) / 1200 == pytest.approx(5.6, rel=0.3)  # mm-image runs ~5-13 req/s in production
    doubled = servegen_trace("mm-image", duration_s=1200, rate_scale=2.0, seed=0)
    assert len(doubled) / len(small) == pytest.approx(2.0, rel=0.2)
    # m-small has a collection gap at 619,200 s: filled from the window before, not left empty.
    gap = servegen_trace("m-small", start_s=618_000, duration_s=3600, target_rps=5, seed=0)
    counts = gap.window_stats(600).set_index("window_start_s")["count"]
    assert counts.loc[619_200] > 0.5 * counts.loc[618_600]
    assert any("collection-gap" in n for n in gap.notes)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"model": "m-huge", "target_rps": 1}, UnknownNameError),
        ({"model": "m-large"}, ConfigError),
        ({"model": "m-large", "target_rps": 1, "rate_scale": 1}, ConfigError),
        ({"model": "mm-image", "target_rps": 1, "start_s": 86_000, "duration_s": 3600}, ConfigError),
        ({"model": "m-large", "target_rps": -1}, ConfigError),
    ],
)
def test_servegen_rejects(kwargs: dict, error: type[OServeError]) -> None:
    model = kwargs.pop("model")
    with pytest.raises(error):
        servegen_trace(model, **kwargs)


# ------------------------------------------------------------------ typing
def test_typer_deterministic_and_portable() -> None:
    trace = load_trace("azure-conv")
    fit_window = trace.slice(0, 1200)
    typer = RequestTyper.fit(fit_window, k=4, seed=0)
    again = RequestTyper.fit(fit_window, k=4, seed=0)
    assert np.array_equal(typer.centers_log, again.centers_log)
    centers = typer.centers_tokens
    assert centers.shape == (4, 2)
    assert np.all(np.diff(centers[:, 0]) >= 0)  # ids ordered by centre input
    labels = typer.predict(trace.slice(1200, 2400))
    assert labels.min() >= 0 and labels.max() <= 3 and len(np.unique(labels)) == 4
    restored = RequestTyper.from_dict(json.loads(json.dumps(typer.to_dict())))
    assert np.array_equal(restored.predict(trace), typer.predict(trace))
    # The nearest centre of a centre is itself.
    probe = Trace(np.zeros(4), np.rint(centers[:, 0]), np.rint(centers[:, 1]), name="c", source="c")
    assert typer.predict(probe).tolist() == [0, 1, 2, 3]
    with pytest.raises(ConfigError):
        RequestTyper.fit(trace.head(2), k=4)
    with pytest.raises(ConfigError):
        RequestTyper.from_dict({"centers_log": [1, 2, 3]})


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.csv", AZURE_HEADER + "2023-11-16 18:15:46.68,12,3\n2023-11-16 18:15:47.00,x,3\n")
    with pytest.raises(TraceError) as info:
        load_azure(path)
    assert "\n" not in str(info.value)
    assert re.search(r"got 'x'", str(info.value))
    assert isinstance(pd.read_csv(path), pd.DataFrame)  # the fixture itself is valid CSV

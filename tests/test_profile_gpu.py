"""scripts/profile_gpu.py: grids, shapes, and a CPU run whose CSVs must match Vidur's schema.

The CPU run uses a tiny layer so the whole file stays well under 30 s; torch is
optional in the default environment, so the runs skip without it.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from scriptload import load_script

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "profile_gpu.py"
VIDUR = REPO.parent / "shared" / "calibration" / "vidur"
VIDUR_MLP = VIDUR / "profiling" / "compute" / "h100" / "meta-llama" / "Llama-2-70b-hf" / "mlp.csv"
VIDUR_ATTN = VIDUR / "legacy_attention_a100_70b_tp2" / "attention.csv"
VIDUR_NET = VIDUR / "profiling" / "network" / "h100_dgx"

TINY = "tiny:n_head=4,n_kv_head=2,n_embd=64,n_expanded_embd=96,vocab=256"
TINY_GELU = "acme/tiny-gelu:n_head=2,n_kv_head=2,n_embd=32,ffn=64,vocab=100,gated=false"
MAX_MODEL_LEN = 128


pg = load_script(SCRIPT, "profile_gpu")


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _header(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return next(csv.reader(f))


def _check_stats(df: pd.DataFrame, op: str) -> None:
    cols = {s: df[f"time_stats.{op}.{s}"].astype(float) for s in pg.STATS}
    assert (cols["min"] > 0).all() and cols["max"].map(math.isfinite).all(), op
    assert (cols["min"] <= cols["median"]).all() and (cols["median"] <= cols["max"]).all(), op
    assert (cols["min"] <= cols["mean"] + 1e-12).all() and (cols["mean"] <= cols["max"] + 1e-12).all(), op
    assert (cols["std"] >= 0).all(), op


# ----------------------------------------------------------------------------- pure functions

def test_token_grid_covers_decode_sizes_and_the_maximum():
    grid = pg.token_grid(4096, quick=False)
    assert grid == sorted(set(grid))
    assert grid[:8] == [1, 2, 3, 4, 5, 6, 7, 8] and grid[-1] == 4096
    assert 40 <= len(grid) <= 80  # dense enough to interpolate, small enough for the time budget
    quick = pg.token_grid(4096, quick=True)
    assert set(quick) < set(grid) and len(quick) < len(grid) / 3
    assert pg.token_grid(32768, quick=False)[-1] == 32768
    assert pg.token_grid(100, quick=True)[-1] == 100  # the maximum is always a row


@pytest.mark.parametrize("max_len", [128, 4096, 8192])
@pytest.mark.parametrize("quick", [False, True])
def test_attention_grids_stay_inside_the_model_length(max_len, quick):
    prefill = pg.prefill_grid(max_len, quick)
    assert prefill and all(c + p <= max_len and c > 0 and p >= 0 for c, p in prefill)
    assert (max_len, 0) in prefill and any(p > 0 for _, p in prefill)
    decode = pg.decode_grid(max_len, quick)
    assert decode and all(1 <= kv < max_len and b >= 1 for b, kv in decode)
    assert {b for b, _ in decode} >= {1, 128}


def test_collective_sizes_are_bytes_from_2kib_to_the_maximum():
    sizes = pg.collective_sizes(256 * 2**20, quick=False)
    assert sizes[0] == 2048 and sizes[-1] == 256 * 2**20 and sizes == sorted(set(sizes))
    assert len(pg.collective_sizes(256 * 2**20, quick=True)) < len(sizes)


def test_time_stats_uses_vidur_column_names():
    stats = pg.time_stats("mlp_act", [1.0, 2.0, 3.0, 6.0])
    assert list(stats) == [f"time_stats.mlp_act.{s}" for s in ("min", "max", "mean", "median", "std")]
    assert stats["time_stats.mlp_act.median"] == 2.5 and stats["time_stats.mlp_act.mean"] == 3.0
    assert stats["time_stats.mlp_act.std"] == pytest.approx(1.8708, abs=1e-4)  # population std, as numpy


@pytest.mark.skipif(not VIDUR_MLP.exists(), reason="Vidur calibration data not present")
def test_column_layout_is_vidurs_exactly():
    assert pg.mlp_columns() == _header(VIDUR_MLP)
    assert pg.attention_columns() == _header(VIDUR_ATTN)


def test_builtin_shapes_agree_with_the_catalog():
    catalog = pytest.importorskip("oserve_rl.catalog")
    for name, shape in pg.BUILTIN_SHAPES.items():
        m = catalog.get_model(name)
        assert (shape.n_head, shape.n_kv_head, shape.n_embd, shape.n_expanded_embd, shape.vocab_size,
                shape.use_gated_mlp) == (m.num_heads, m.num_kv_heads, m.hidden_size, m.ffn_size, m.vocab_size,
                                         m.gated_mlp), name
        assert pg.resolve_shape(name) == shape  # catalog path keeps Vidur's folder name


def test_builtin_folders_are_ones_the_calibration_reader_maps():
    reader = pytest.importorskip("oserve_rl.perf.calibration_data")
    for name, shape in pg.BUILTIN_SHAPES.items():
        assert reader.MODEL_DIR_NAMES.get(shape.org_model.split("/")[1]) == name


def test_resolve_shape_accepts_hf_ids_and_rejects_unknown_names():
    assert pg.resolve_shape("meta-llama/Llama-2-70b-hf").name == "llama-2-70b"
    with pytest.raises(pg.ProfileInputError, match="unknown model 'llama-9000'.*llama-2-7b"):
        pg.resolve_shape("llama-9000")


def test_input_errors_are_project_config_errors():
    errors = pytest.importorskip("oserve_rl.errors")
    assert issubclass(pg.ProfileInputError, errors.OServeError)


def test_parse_shape():
    s = pg.parse_shape(TINY_GELU)
    assert (s.org_model, s.n_head, s.n_expanded_embd, s.vocab_size, s.use_gated_mlp, s.d_head) == (
        "acme/tiny-gelu", 2, 64, 100, False, 16)
    assert pg.parse_shape(TINY).org_model == "custom/tiny"


@pytest.mark.parametrize("spec, match", [
    ("tiny", "expected NAME:key=value"),
    ("tiny:n_head=4,n_kv_head=2,n_embd=64,vocab=256", "missing n_expanded_embd"),
    ("tiny:n_head=4,n_kv_head=3,n_embd=64,ffn=8,vocab=256", "not a multiple of n_kv_head 3"),
    ("tiny:n_head=four,n_kv_head=2,n_embd=64,ffn=8,vocab=256", "n_head must be an integer, got 'four'"),
    ("tiny:heads=4", "bad item 'heads=4'"),
    ("a/b/c:n_head=4,n_kv_head=2,n_embd=64,ffn=8,vocab=256", "one folder level"),
    ("tiny:n_head=4,n_kv_head=2,n_embd=64,ffn=8,vocab=256,gated=maybe", "true or false"),
])
def test_parse_shape_errors_name_the_problem(spec, match):
    with pytest.raises(pg.ProfileInputError, match=match):
        pg.parse_shape(spec)


def test_tp_problem():
    s = pg.parse_shape(TINY)
    assert s.tp_problem(1) is None and s.tp_problem(4) is None  # 4 > 2 kv heads: replicated, as vLLM does
    assert "not divisible by TP 3" in s.tp_problem(3)


@pytest.mark.parametrize("args, match", [
    (["--models", "llama-9000"], "unknown model 'llama-9000'"),
    (["--models", "", "--shape", "tiny"], "expected NAME:key=value"),
    (["--tp", "1,zero"], "--tp '1,zero'"),
    (["--models", ""], "nothing to profile"),
    (["--models", "llama-2-7b,meta-llama/Llama-2-7b-hf"], "listed twice"),
])
def test_cli_input_errors_are_one_line_and_exit_2(tmp_path, args, match):
    res = _run("--out", str(tmp_path), "--device", "cpu", *args)
    assert res.returncode == 2
    assert match in res.stderr and "Traceback" not in res.stderr
    assert not list(tmp_path.iterdir())  # nothing written before the input was checked


def test_help_explains_without_torch():
    res = _run("--help")
    assert res.returncode == 0
    for flag in ("--gpu-name", "--models", "--tp", "--out", "--device", "--dtype", "--quick", "--collectives"):
        assert flag in res.stdout


# ----------------------------------------------------------------------------- CPU runs

@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("profile")
    res = _run("--device", "cpu", "--quick", "--models", "", "--shape", TINY, "--shape", TINY_GELU,
               "--tp", "1,2,3", "--max-num-tokens", "16", "--max-model-len", str(MAX_MODEL_LEN),
               "--gpu-name", "testgpu", "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out, res


def test_cpu_run_writes_vidur_layout(cpu_run):
    out, res = cpu_run
    compute = out / "profiling" / "compute" / "testgpu"
    for model in ("custom/tiny", "acme/tiny-gelu"):
        assert (compute / model / "mlp.csv").is_file() and (compute / model / "attention.csv").is_file()
    meta = json.loads((out / "profile_metadata_testgpu.json").read_text())
    assert meta["device"] == "cpu" and meta["profile_method"] == "ProfileMethod.PERF_COUNTER"
    assert meta["models"]["tiny"]["tp"] == [1, 2]
    assert "tp=3: skipped (n_head 4 is not divisible by TP 3)" in res.stdout
    assert "ETA" in res.stdout


def test_mlp_csv_matches_vidur_schema_and_times_are_positive(cpu_run):
    out, _ = cpu_run
    path = out / "profiling" / "compute" / "testgpu" / "custom" / "tiny" / "mlp.csv"
    if VIDUR_MLP.exists():
        assert set(_header(path)) == set(_header(VIDUR_MLP))
    df = pd.read_csv(path)
    for op in pg.MLP_OPS:
        _check_stats(df, op)
    assert sorted(df.num_tokens.unique()) == [1, 2, 4, 8, 16]
    assert sorted(df.num_tensor_parallel_workers.unique()) == [1, 2]
    assert len(df) == 5 * 2
    row = df.iloc[0]
    assert (row.n_head, row.n_kv_head, row.n_embd, row.n_expanded_embd, row.vocab_size) == (4, 2, 64, 96, 256)
    assert df.use_gated_mlp.dtype == bool and df.use_gated_mlp.all()
    gelu = pd.read_csv(out / "profiling" / "compute" / "testgpu" / "acme" / "tiny-gelu" / "mlp.csv")
    assert not gelu.use_gated_mlp.any()


def test_attention_csv_matches_vidur_schema(cpu_run):
    out, _ = cpu_run
    path = out / "profiling" / "compute" / "testgpu" / "custom" / "tiny" / "attention.csv"
    if VIDUR_ATTN.exists():
        assert set(_header(path)) == set(_header(VIDUR_ATTN))
    df = pd.read_csv(path)
    assert df.is_prefill.dtype == bool
    prefill, decode = df[df.is_prefill], df[~df.is_prefill]
    assert len(prefill) and len(decode)
    _check_stats(prefill, "attn_prefill")
    _check_stats(decode, "attn_decode")
    for op in ("attn_input_reshape", "attn_output_reshape"):
        _check_stats(df, op)
    assert prefill["time_stats.attn_decode.median"].isna().all()
    assert decode["time_stats.attn_prefill.median"].isna().all()
    assert (prefill.batch_size == 1).all() and (decode.prefill_chunk_size == 0).all()
    assert (prefill.prefill_chunk_size + prefill.kv_cache_size <= MAX_MODEL_LEN).all()
    assert (prefill.kv_cache_size > 0).any()  # chunked prefill over a cached prefix is covered
    assert (df.n_q_head == 4).all() and (df.n_kv_head == 2).all() and (df.max_model_len == MAX_MODEL_LEN).all()
    assert set(df.profile_method) == {"ProfileMethod.PERF_COUNTER"}


def test_calibration_reader_loads_the_output(cpu_run):
    reader = pytest.importorskip("oserve_rl.perf.calibration_data")
    out, _ = cpu_run
    ops = reader.load_ops(out)
    assert set(ops.gpu) == {"testgpu"} and set(ops.model) == {"tiny", "tiny-gelu"}
    assert {"attn_pre_proj", "mlp_up_proj", "mlp_down_proj"} <= set(ops.op)
    attn = reader.load_attention(out)
    assert set(attn.gpu) == {"testgpu"} and attn.is_prefill.any() and (~attn.is_prefill).any()
    assert (attn.time_s > 0).all()


def test_prefill_impl_is_lower_right_causal():
    torch = pytest.importorskip("torch")
    name, make = pg.pick_prefill_impl(torch, torch.device("cpu"), torch.float32, 4, 2, 16)
    q, k, v = (torch.randn(1, h, n, 16) for h, n in ((4, 5), (2, 17), (2, 17)))
    torch.testing.assert_close(make(q, k, v)(), pg._reference_attention(torch, q, k, v), atol=1e-4, rtol=1e-4)
    # The last query sees every key; the first sees only the prefix and itself, not the future.
    k2 = k.clone()
    k2[:, :, -1] += 10
    assert torch.allclose(make(q, k2, v)()[:, :, 0], make(q, k, v)()[:, :, 0])
    assert not torch.allclose(make(q, k2, v)()[:, :, -1], make(q, k, v)()[:, :, -1])


def test_collectives_on_cpu_gloo_match_vidur_network_schema(tmp_path):
    pytest.importorskip("torch")
    res = _run("--device", "cpu", "--quick", "--models", "", "--shape", TINY, "--tp", "1", "--no-attention",
               "--max-num-tokens", "2", "--collectives", "--collective-workers", "2",
               "--collective-max-bytes", "8192", "--gpu-name", "testgpu", "--topology", "pairwise_nvlink",
               "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr
    net = tmp_path / "profiling" / "network" / "testgpu_pairwise_nvlink"
    for coll in ("all_reduce", "send_recv"):
        path = net / f"{coll}.csv"
        if VIDUR_NET.exists():
            assert _header(path) == _header(VIDUR_NET / f"{coll}.csv")
        df = pd.read_csv(path, index_col=0)
        _check_stats(df, coll)
        assert sorted(df["size"]) == [2048, 8192] and (df.num_workers == 2).all() and (df.collective == coll).all()
    reader = pytest.importorskip("oserve_rl.perf.calibration_data")
    net_df = reader.load_network(tmp_path)
    assert set(net_df.topology) == {"pairwise_nvlink"} and set(net_df.gpu) == {"testgpu"}


def test_calibration_reads_an_extra_profile_folder_beside_the_shipped_one(cpu_run, tmp_path):
    """`perf calibrate --extra-data-dir OUT`: the new GPU's rows join the shipped ones; a folder named after
    no catalog GPU is one clear error before any fitting."""
    fit = pytest.importorskip("oserve_rl.perf.fit")
    from oserve_rl.perf.calibration_data import find_calibration_dir

    try:
        shipped = find_calibration_dir()
    except Exception:
        pytest.skip("no shipped calibration data (../shared/calibration/vidur)")
    out, _ = cpu_run
    alone, both = fit.load_inputs(shipped), fit.load_inputs(shipped, extra_dirs=(out,))
    assert set(both.ops.gpu) == set(alone.ops.gpu) | {"testgpu"}
    assert len(both.ops) == len(alone.ops) + (both.ops.gpu == "testgpu").sum()
    assert (both.attention.gpu == "testgpu").any() and len(both.network) == len(alone.network)
    res = subprocess.run([sys.executable, "-m", "oserve_rl", "perf", "calibrate", "--data-dir", str(shipped),
                          "--extra-data-dir", str(out), "--out", str(tmp_path / "p.json")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("error:") == 1, res.stderr
    assert "unknown GPU 'testgpu'" in res.stderr and "h200" in res.stderr and "--gpu-name" in res.stderr
    assert "fitting a100" not in res.stderr  # refused before the first fit
    assert not (tmp_path / "p.json").exists()
    res = subprocess.run([sys.executable, "-m", "oserve_rl", "perf", "calibrate", "--extra-data-dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "not a calibration folder" in res.stderr

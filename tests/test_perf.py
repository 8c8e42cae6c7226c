"""The performance model: consistency of its forms, vLLM's memory accounting, bad input."""

import math

import numpy as np
import pytest

from oserve_rl.errors import ConfigError, DoesNotFitError
from oserve_rl.perf import EngineConfig, replica_perf
from oserve_rl.perf.predict import predict_points, read_points


@pytest.fixture(scope="module")
def a100_70b():
    return replica_perf("llama-2-70b", "a100-80gb", tp=2)


def test_decode_coeffs_match_iteration(a100_70b):
    for b in (1, 7, 64, 256):
        ctx = np.random.default_rng(b).integers(10, 4000, size=b)
        base, slope = a100_70b.decode_step_coeffs(b)
        assert base + slope * ctx.sum() == pytest.approx(a100_70b.iteration_s([], [], ctx), rel=1e-12)


def test_closed_form_equals_step_sum(a100_70b):
    b, c0, k = 12, 12 * 700, 137
    steps = sum(a100_70b.decode_step_coeffs(b)[0] + a100_70b.decode_step_coeffs(b)[1] * (c0 + b * i) for i in range(k))
    assert a100_70b.decode_steps_s(b, c0, k) == pytest.approx(steps, rel=1e-12)


def test_agg_equals_array_form(a100_70b):
    t1 = a100_70b.iteration_s([300, 12], [1000, 0], [500, 600, 700])
    pairs = 300 * (1000 + 301 / 2) + 12 * (0 + 13 / 2)
    t2 = a100_70b.iteration_s_agg(315, 5, pairs, 3, 1800)
    assert t1 == pytest.approx(t2, rel=1e-12)


def test_monotone_and_sane(a100_70b):
    pre = [a100_70b.prefill_s(n) for n in (128, 512, 2048, 4096)]
    assert all(x < y for x, y in zip(pre, pre[1:]))
    dec = [a100_70b.decode_s(b, 1024) for b in (1, 16, 128)]
    assert all(x <= y for x, y in zip(dec, dec[1:]))
    # Decode of a 70B at TP2 streams ~69 GB of weights per step across 2 GPUs: tens of ms on an A100.
    assert 0.035 < a100_70b.decode_s(1, 512) < 0.09
    # Prefill is compute-bound: 2 x 69e9 x 2048 FLOP over 2 x 312 TFLOP/s is 0.45 s at full peak.
    assert 0.45 < a100_70b.prefill_s(2048) < 1.2


def test_faster_gpu_is_faster():
    a = replica_perf("llama-2-70b", "a100-80gb", tp=2)
    h = replica_perf("llama-2-70b", "h100", tp=2)
    h200 = replica_perf("llama-2-70b", "h200", tp=2)
    assert h.prefill_s(2048) < a.prefill_s(2048)
    assert h.decode_s(32, 1024) < a.decode_s(32, 1024)
    assert h200.decode_s(32, 1024) < h.decode_s(32, 1024)  # more HBM bandwidth, same FLOPs


def test_more_tp_is_faster_per_iteration():
    t = [replica_perf("llama-2-70b", "h100", tp=tp).prefill_s(2048) for tp in (2, 4, 8)]
    assert t[0] > t[1] > t[2]


def test_kv_capacity_matches_vllm_formula(a100_70b):
    eng = EngineConfig()
    gib = 1024**3
    weights = math.ceil(68.97664e9 * 2 / 2)  # bytes per GPU
    budget = 79.15 * gib * 0.9
    per_token = 2 * 80 * 4 * 128 * 2  # K,V x layers x kv heads per GPU x head dim x bf16
    blocks = int((budget - weights - a100_70b.activation_reserve_bytes(eng)) // (16 * per_token))
    assert a100_70b.kv_bytes_per_token_per_gpu == per_token
    assert a100_70b.kv_capacity_tokens(eng) == blocks * 16
    assert 30_000 < a100_70b.kv_capacity_tokens(eng) < 50_000
    # More memory headroom, more KV.
    assert a100_70b.kv_capacity_tokens(EngineConfig(gpu_memory_utilization=0.95)) > blocks * 16


def test_does_not_fit():
    with pytest.raises(DoesNotFitError, match=r"llama-2-70b on 1 x a100-80gb .*does not fit.*larger tp"):
        replica_perf("llama-2-70b", "a100-80gb", tp=1).check_fits()
    replica_perf("llama-2-70b", "a100-80gb", tp=2).check_fits()


def test_tp_must_divide_heads():
    with pytest.raises(ConfigError, match=r"tp=3 does not divide num_heads=64"):
        replica_perf("llama-2-70b", "h100", tp=3)
    with pytest.raises(ConfigError, match=r"tp=8 does not divide num_heads=28"):
        replica_perf("qwen2.5-7b", "h100", tp=8)


def test_kv_heads_replicate_beyond_their_count():
    p = replica_perf("llama-3-8b", "h100", tp=8)  # 8 KV heads: one per GPU
    q = replica_perf("qwen2.5-72b", "h100", tp=8)
    assert p.geom.kv_heads_per_gpu == 1 and q.geom.kv_heads_per_gpu == 1


def test_moe_reads_only_touched_experts():
    mix = replica_perf("mixtral-8x7b", "h100", tp=2)
    dense_equiv = replica_perf("llama-3-8b", "h100", tp=2)
    # One token touches 2 of 8 experts: far cheaper than streaming all 46.7B weights.
    one = mix.decode_s(1, 512)
    assert one < 2.0 * mix.model.active_params / mix.model.total_params * mix.decode_s(256, 512)
    assert one > dense_equiv.decode_s(1, 512)


def test_bad_engine_config():
    with pytest.raises(ConfigError, match="gpu_memory_utilization=1.5"):
        EngineConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="block_size"):
        EngineConfig(block_size=10)


def test_negative_tokens_rejected(a100_70b):
    with pytest.raises(ConfigError, match="prefill_tokens must be > 0"):
        a100_70b.iteration_s([0], [0], [])
    with pytest.raises(ConfigError, match="context tokens >= 0"):
        a100_70b.iteration_s([], [], [-5])


def test_standalone_latency_counts_chunks(a100_70b):
    one = a100_70b.standalone_latency_s(1000, 1)
    assert one == pytest.approx(a100_70b.iteration_s([1000], [0], []), rel=1e-12)
    long_ = a100_70b.standalone_latency_s(5000, 100)
    assert long_ > a100_70b.standalone_latency_s(5000, 1) > one


def _points(tmp_path, rows, header="gpu,model,tp,pp,phase,batch_size,prompt_tokens,context_tokens"):
    p = tmp_path / "points.csv"
    p.write_text(header + "\n" + "\n".join(rows) + ("\n" if rows else ""))
    return p


def test_predict_points(tmp_path):
    p = _points(tmp_path, ["h100,meta-llama/Llama-2-70b-hf,2,1,prefill,1,1024,0", "a100,llama-2-70b,2,1,decode,32,0,1024"])
    out = predict_points(read_points(p), str(p))
    a = replica_perf("llama-2-70b", "a100", tp=2)
    assert out.predicted_ms.iloc[1] == pytest.approx(a.decode_s(32, 1024) * 1e3)
    assert (out.predicted_ms > 0).all()


@pytest.mark.parametrize("row,match", [
    ("h10,llama-2-70b,2,1,prefill,1,1024,0", r"row 1: unknown GPU 'h10'; did you mean 'h100'"),
    ("h100,llama-2-7,2,1,prefill,1,1024,0", r"row 1: unknown model 'llama-2-7'; did you mean"),
    ("h100,llama-2-70b,3,1,prefill,1,1024,0", r"row 1: .*tp=3 does not divide"),
    ("h100,llama-2-70b,2,1,prefill,1,0,0", r"row 1: batch_size and prompt_tokens must be > 0"),
    ("h100,llama-2-70b,2,1,decode,1,0,-4", r"row 1: batch_size and context_tokens must be > 0"),
    ("h100,llama-2-70b,2,1,train,1,5,5", r"row 1: phase 'train'"),
])
def test_predict_bad_rows(tmp_path, row, match):
    p = _points(tmp_path, [row])
    with pytest.raises(ConfigError, match=match):
        predict_points(read_points(p), str(p))


def test_predict_bad_files(tmp_path):
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(ConfigError, match="empty file"):
        read_points(empty)
    with pytest.raises(ConfigError, match="no rows"):
        read_points(_points(tmp_path, []))
    with pytest.raises(ConfigError, match=r"missing columns \['phase'"):
        read_points(_points(tmp_path, ["h100,llama-2-70b,2,1,1,5,5"], header="gpu,model,tp,pp,batch_size,prompt_tokens,context_tokens"))


def test_cli_error_is_one_line(tmp_path, capsys):
    from oserve_rl.__main__ import main

    p = _points(tmp_path, ["h10,llama-2-70b,2,1,prefill,1,1024,0"])
    assert main(["perf", "predict", "--points", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_overriding_the_engine_overheads_reaches_the_iteration_kernel():
    """ReplicaPerf documents step_overhead_s / per_seq_overhead_s as per-instance overrides; the compiled
    IterationCost reads them at construction, so setting one must rebuild it."""
    from oserve_rl.catalog import get_gpu, get_model
    from oserve_rl.perf import ReplicaPerf

    perf = ReplicaPerf(get_model("llama-2-70b"), get_gpu("a100-80gb"), tp=2)
    before = perf.iteration_s_agg(64, 64, 0.0, 64, 64_000)
    perf.step_overhead_s += 0.01
    perf.per_seq_overhead_s += 1e-5
    assert perf.iteration_s_agg(64, 64, 0.0, 64, 64_000) == pytest.approx(before + 0.01 + 64 * 1e-5, rel=1e-12)
    assert replica_perf("llama-2-70b", "a100-80gb", tp=2).step_overhead_s == ReplicaPerf.step_overhead_s


def test_iteration_cost_beyond_its_tables_matches_the_numpy_path(a100_70b):
    big = a100_70b.TABLE_TOKENS + 100
    lin = float(a100_70b._linear_table(np.array([big]))[0])
    t = a100_70b.iteration_s_agg(big, 1, 0.0, 0, 0)
    assert t == pytest.approx(lin + a100_70b.lm_head_scalar(1) + a100_70b.step_overhead_s + a100_70b.per_seq_overhead_s,
                              rel=1e-12)
    base, slope = a100_70b.decode_attn_coeffs(5000)
    d = a100_70b.iteration_s_agg(5000, 5000, 0.0, 5000, 10**7)
    assert d == pytest.approx(a100_70b.linear_s(5000) + a100_70b.lm_head_scalar(5000) + base + slope * 10**7
                              + a100_70b.step_overhead_s + 5000 * a100_70b.per_seq_overhead_s, rel=1e-12)

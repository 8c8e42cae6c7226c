"""Fit the performance model's efficiency curves to measured operator timings.

One command regenerates the versioned parameter file shipped in the package::

    python -m oserve_rl perf calibrate            # writes oserve_rl/perf/data/calibration.json

What is fitted, per profiled GPU (a100, h100, a40):

- GEMMs (QKV, O, gate+up, down projections): a soft roofline
  ``t = c0 + smoothmax(F / (P * e_c), bytes / (B * e_m))`` where the compute
  efficiency ``e_c`` is a curve in the token count (times a factor in the
  matrix size) and the memory efficiency ``e_m`` a curve in the weight bytes.
- Element-wise ops (norms, RoPE, activation, residual add, embedding):
  ``t = c0 + bytes / (B * e(bytes))``, one curve per op.
- Attention (FlashAttention-style, from the one attention table, A100):
  prefill ``t = c0 + 4 h d pairs / (P * e_p(pairs))``; decode
  ``t = a0 + a1 b + kv_bytes / (B * e_d(b))`` (linear in total context for a
  fixed batch, which is what the simulator's closed form needs).
- Collectives: all-reduce ``t = alpha_n + 2 (n-1)/n * size / busbw_n`` with one
  (alpha, busbw) pair per measured world size n, and send/recv
  ``t = alpha + size / bw``, by least squares on log time.

Held out of every fit (and reported by ``perf validate``): TP degree 4 and the
model codellama-34b (every operator row), every fourth message size of the
network tables, and every fourth context size of the attention table. The
network tables are a measurement of the interconnect, not of a model's
sharding, so each measured world size is fitted (on 3 of every 4 sizes);
``perf validate`` also reports the stricter protocol in which the 4-GPU
all-reduce is unseen too (then a 4-GPU ring borrows the 8-GPU fit). GPUs without profiles borrow the curves of the GPU
named by their catalog's ``calibrated_as`` and their own datasheet peaks.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

from oserve_rl.catalog import get_gpu
from oserve_rl.errors import ConfigError, UnknownNameError
from oserve_rl.perf.calibration_data import find_calibration_dir, load_attention, load_network, load_ops
from oserve_rl.perf.curves import interp_log2, sigmoid, smooth_max
from oserve_rl.perf.ops import ELEMENTWISE_OPS, GEMM_OPS, LayerGeometry

SCHEMA_VERSION = 2  # 2: all-reduce (alpha, busbw) per measured world size
PARAMS_PATH = Path(__file__).parent / "data" / "calibration.json"

# Catalog GPU whose datasheet peaks the measured folder names mean.
PROFILED_GPUS = {"a100": "a100-80gb", "h100": "h100-sxm", "a40": "a40"}

# Knots, in log2 units, of each efficiency curve.
GEMM_TOKEN_KNOTS = np.arange(0.0, 16.0, 1.0)          # 1 .. 32k tokens
GEMM_SIZE_KNOTS = np.array([18.0, 21.0, 24.0, 27.0])  # K*N elements
GEMM_WEIGHT_KNOTS = np.array([20.0, 23.0, 26.0, 29.0])  # weight bytes
ELEM_KNOTS = np.array([12.0, 16.0, 20.0, 24.0, 28.0])  # bytes moved
ATTN_PAIR_KNOTS = np.arange(11.0, 25.0, 1.0)          # causal query-key pairs
ATTN_BATCH_KNOTS = np.arange(0.0, 8.0, 1.0)           # decode batch 1 .. 128
SMOOTH_P = 3.0


@dataclass(frozen=True)
class Holdout:
    """What no fit may see: the validation report measures error on exactly these rows."""

    tp: tuple[int, ...] = (4,)
    models: tuple[str, ...] = ("codellama-34b",)
    network_every: int = 4  # every Nth distinct message size of the network tables
    attention_every: int = 4  # every Nth distinct context size of the attention table

    def ops_mask(self, df: pd.DataFrame) -> np.ndarray:
        return (df.tp.isin(self.tp) | df.model.isin(self.models)).to_numpy()

    def attention_mask(self, df: pd.DataFrame) -> np.ndarray:
        sizes = np.sort(df.kv_cache_size.unique())
        held = set(sizes[self.attention_every - 1 :: self.attention_every])
        return df.kv_cache_size.isin(held).to_numpy()

    def network_mask(self, df: pd.DataFrame) -> np.ndarray:
        sizes = np.sort(df.size_bytes.unique())
        return df.size_bytes.isin(set(sizes[self.network_every - 1 :: self.network_every])).to_numpy()


# ---------------------------------------------------------------- features
def geometry_of_row(r) -> LayerGeometry:
    return LayerGeometry(hidden=int(r.n_embd), num_heads=int(r.n_head), num_kv_heads=int(r.n_kv_head),
                         head_dim=int(r.n_embd) // int(r.n_head), ffn=int(r.n_expanded_embd),
                         vocab=int(r.vocab_size), gated=bool(r.use_gated_mlp), tp=int(r.tp))


def op_features(df: pd.DataFrame) -> pd.DataFrame:
    """Add flops, weight_bytes, act_bytes, kn (GEMMs) or bytes (element-wise) to an ops table."""
    df = df.copy()
    for c in ("flops", "weight_bytes", "act_bytes", "kn", "bytes"):
        df[c] = 0.0
    keys = ["n_embd", "n_head", "n_kv_head", "n_expanded_embd", "vocab_size", "use_gated_mlp", "tp", "op"]
    for _, idx in df.groupby(keys).groups.items():
        r = df.loc[idx[0]]
        g = geometry_of_row(r)
        n = df.loc[idx, "num_tokens"].to_numpy()
        if r.op in GEMM_OPS:
            f, w, a = g.gemm_cost(r.op, n)
            k, nn = g.gemm_kn(r.op)
            df.loc[idx, ["flops", "weight_bytes", "act_bytes", "kn"]] = np.c_[f, w, a, np.full(len(n), k * nn)]
        else:
            df.loc[idx, "bytes"] = g.elementwise_bytes(r.op, n)
    return df


# ---------------------------------------------------------------- model forms (shared with predict)
def gemm_time_s(p: dict, peak_flops: float, hbm: float, tokens, flops, weight_bytes, act_bytes, kn):
    e_c = sigmoid(interp_log2(tokens, GEMM_TOKEN_KNOTS, p["token_logits"])) * sigmoid(
        interp_log2(kn, GEMM_SIZE_KNOTS, p["size_logits"]))
    e_m = sigmoid(interp_log2(weight_bytes, GEMM_WEIGHT_KNOTS, p["weight_logits"]))
    return p["c0_s"] + smooth_max(flops / (peak_flops * e_c), (weight_bytes + act_bytes) / (hbm * e_m), SMOOTH_P)


def elementwise_time_s(p: dict, hbm: float, nbytes):
    return p["c0_s"] + nbytes / (hbm * sigmoid(interp_log2(nbytes, ELEM_KNOTS, p["logits"])))


def attn_prefill_time_s(p: dict, peak_flops: float, flops, pairs):
    return p["c0_s"] + flops / (peak_flops * sigmoid(interp_log2(pairs, ATTN_PAIR_KNOTS, p["pair_logits"])))


def attn_decode_coeffs(p: dict, hbm: float, batch, kv_bytes_per_token: float):
    """(base_s, per_context_token_s) of decode attention for a batch of ``batch`` sequences."""
    b = np.asarray(batch, dtype=np.float64)
    eff = sigmoid(interp_log2(b, ATTN_BATCH_KNOTS, p["batch_logits"]))
    return p["a0_s"] + p["a1_s"] * b, kv_bytes_per_token / (hbm * eff)


def allreduce_params(p: dict, workers: int) -> dict:
    """The (alpha, busbw) fitted for ``workers`` GPUs, else for the next larger measured world size.

    Start-up latency is not a smooth function of n: NCCL picks another
    algorithm per size and world size (the A100 tables: 2 GPUs ~50 us, 4 GPUs
    ~20 us, 8 GPUs ~30 us for small messages), so sizes are not interpolated
    across n. An unmeasured n borrows the next larger measured ring, which is
    never faster in practice; beyond the largest, the largest.
    """
    by = p["by_workers"]
    measured = sorted(int(k) for k in by)
    n = next((m for m in measured if m >= workers), measured[-1])
    return by[str(n)]


def allreduce_time_s(p: dict, link_scale: float, size_bytes, workers):
    """Ring all-reduce: a start-up latency plus 2 (n-1)/n of the message over the bus bandwidth."""
    size = np.asarray(size_bytes, dtype=np.float64)
    w = np.asarray(workers)
    if w.ndim == 0:
        q = allreduce_params(p, int(w))
        return q["alpha_s"] + 2 * (int(w) - 1) / int(w) * size / (q["busbw_Bps"] * link_scale)
    out = np.empty(np.broadcast(size, w).shape)
    for n in np.unique(w):
        m = np.broadcast_to(w == n, out.shape)
        out[m] = allreduce_time_s(p, link_scale, np.broadcast_to(size, out.shape)[m], int(n))
    return out


def send_recv_time_s(p: dict, bw_scale: float, size_bytes):
    return p["alpha_s"] + size_bytes / (p["bw_Bps"] * bw_scale)


# ---------------------------------------------------------------- fitting
def _fit(residuals, x0, curve_slices=(), **kw):
    """Robust least squares on log-time residuals.

    Each curve (a slice of x holding logits at knots) gets a smoothness penalty
    on its second differences and a weak pull towards logit 0, so knots that
    the data barely constrains stay near their neighbours instead of running off.
    """

    def penalised(x):
        extra = [0.03 * np.diff(x[s], 2) for s in curve_slices] + [0.002 * x[s] for s in curve_slices]
        return np.concatenate([residuals(x), *extra])

    return least_squares(penalised, x0, loss="soft_l1", f_scale=0.05, max_nfev=4000, **kw).x


def fit_gemm(df: pd.DataFrame, peak: float, hbm: float) -> dict:
    t = df.time_s.to_numpy()
    cols = [df[c].to_numpy() for c in ("num_tokens", "flops", "weight_bytes", "act_bytes", "kn")]
    nt, ns, nw = len(GEMM_TOKEN_KNOTS), len(GEMM_SIZE_KNOTS), len(GEMM_WEIGHT_KNOTS)

    def unpack(x):
        return {"token_logits": x[:nt], "size_logits": x[nt : nt + ns], "weight_logits": x[nt + ns : nt + ns + nw],
                "c0_s": np.exp(x[-1]) * 1e-6}

    def res(x):
        return np.log(gemm_time_s(unpack(x), peak, hbm, *cols) / t)

    x0 = np.r_[np.full(nt, 1.0), np.full(ns, 3.0), np.full(nw, 1.0), np.log(5.0)]
    curves = (slice(0, nt), slice(nt, nt + ns), slice(nt + ns, nt + ns + nw))
    return _tolist(unpack(_fit(res, x0, curves)))


def fit_elementwise(df: pd.DataFrame, hbm: float) -> dict:
    t, nbytes = df.time_s.to_numpy(), df["bytes"].to_numpy()

    def unpack(x):
        return {"logits": x[:-1], "c0_s": np.exp(x[-1]) * 1e-6}

    x0 = np.r_[np.full(len(ELEM_KNOTS), 0.0), np.log(3.0)]
    return _tolist(unpack(_fit(lambda x: np.log(elementwise_time_s(unpack(x), hbm, nbytes) / t), x0,
                              (slice(0, len(ELEM_KNOTS)),))))


def attention_geometry(r) -> LayerGeometry:
    return LayerGeometry(hidden=int(r.n_embd), num_heads=int(r.n_q_head), num_kv_heads=int(r.n_kv_head),
                         head_dim=int(r.n_embd) // int(r.n_q_head), ffn=1, vocab=1, gated=True, tp=int(r.tp))


def fit_attention(df: pd.DataFrame, peak: float, hbm: float) -> dict:
    g = attention_geometry(df.iloc[0])
    pre, dec = df[df.is_prefill], df[~df.is_prefill]
    pairs = pre.chunk.to_numpy() * (pre.kv_cache_size.to_numpy() + (pre.chunk.to_numpy() + 1) / 2)
    flops, tp_ = g.prefill_attn_flops(pairs), pre.time_s.to_numpy()

    def up(x):
        return {"pair_logits": x[:-1], "c0_s": np.exp(x[-1]) * 1e-6}

    x0 = np.r_[np.full(len(ATTN_PAIR_KNOTS), 0.0), np.log(10.0)]
    prefill = up(_fit(lambda x: np.log(attn_prefill_time_s(up(x), peak, flops, pairs) / tp_), x0,
                      (slice(0, len(ATTN_PAIR_KNOTS)),)))

    b = dec.batch_size.to_numpy().astype(float)
    ctx_total = b * dec.kv_cache_size.to_numpy()
    td = dec.time_s.to_numpy()
    kvb = g.kv_bytes_per_token()

    def ud(x):
        return {"batch_logits": x[:-2], "a0_s": np.exp(x[-2]) * 1e-6, "a1_s": np.exp(x[-1]) * 1e-6}

    def rd(x):
        base, slope = attn_decode_coeffs(ud(x), hbm, b, kvb)
        return np.log((base + slope * ctx_total) / td)

    x0 = np.r_[np.full(len(ATTN_BATCH_KNOTS), 0.0), np.log(10.0), np.log(0.1)]
    decode = ud(_fit(rd, x0, (slice(0, len(ATTN_BATCH_KNOTS)),)))
    return _tolist({"prefill": prefill, "decode": decode})


def binned_medians(df: pd.DataFrame, by: list[str], bins_per_decade: int = 4) -> pd.DataFrame:
    """Median size and time per log-size bin: single network timings are noisy (warm-up spikes of 3-5x)."""
    b = np.floor(np.log10(df.size_bytes.to_numpy()) * bins_per_decade)
    return df.assign(_bin=b).groupby([*by, "_bin"], as_index=False)[["size_bytes", "time_s"]].median()


def fit_collectives(df: pd.DataFrame) -> dict:
    """Collectives on NVSwitch ("dgx") machines: every GPU reaches every other at full link speed.

    The "pairwise_nvlink" tables come from boxes without NVSwitch, where a
    4-GPU ring crosses slow hops (5-10x slower); our clusters assume NVSwitch.
    """
    out = {}
    if (df.topology == "dgx").any():
        df = df[df.topology == "dgx"]
    ar = df[(df.collective == "all_reduce") & (df.devices_per_node == df.num_workers)]
    if len(ar):
        by = {}
        for n, grp in binned_medians(ar, ["num_workers"]).groupby("num_workers"):
            s, t = grp.size_bytes.to_numpy(), grp.time_s.to_numpy()

            def ua(x):
                return {"alpha_s": np.exp(x[0]) * 1e-6, "busbw_Bps": np.exp(x[1]) * 1e9}

            by[str(int(n))] = ua(_fit(lambda x: np.log(allreduce_time_s({"by_workers": {str(int(n)): ua(x)}},
                                                                         1.0, s, int(n)) / t),
                                      np.r_[np.log(30.0), np.log(100.0)]))
        out["all_reduce"] = {"by_workers": by}
    for scope, mask in (("intra_node", df.devices_per_node == df.num_workers),
                        ("inter_node", df.devices_per_node < df.num_workers)):
        sr = df[(df.collective == "send_recv") & mask]
        if len(sr):
            sr = binned_medians(sr, [])
            s, t = sr.size_bytes.to_numpy(), sr.time_s.to_numpy()

            def us(x):
                return {"alpha_s": np.exp(x[0]) * 1e-6, "bw_Bps": np.exp(x[1]) * 1e9}

            out[f"send_recv_{scope}"] = us(_fit(lambda x: np.log(send_recv_time_s(us(x), 1.0, s) / t),
                                                np.r_[np.log(10.0), np.log(50.0)]))
    return _tolist(out)


def _tolist(d):
    if isinstance(d, dict):
        return {k: _tolist(v) for k, v in d.items()}
    if isinstance(d, np.ndarray):
        return [float(v) for v in d]
    if isinstance(d, (np.floating, float)):
        return float(d)
    return d


@dataclass
class CalibrationInputs:
    ops: pd.DataFrame
    attention: pd.DataFrame
    network: pd.DataFrame
    data_dir: Path
    holdout: Holdout = field(default_factory=Holdout)


def load_inputs(data_dir=None, holdout: Holdout | None = None, extra_dirs: tuple = ()) -> CalibrationInputs:
    """The measured tables of ``data_dir`` (default: ``find_calibration_dir``) and of each of ``extra_dirs``
    (e.g. an H200 profiled with ``scripts/profile_gpu.py``), read as one. Extra folders need no network
    measurements: a GPU without them borrows a profiled GPU's collectives (``calibrate``)."""
    d = find_calibration_dir(data_dir)
    ops, attention, network = [load_ops(d)], [load_attention(d)], [load_network(d)]
    for extra in map(Path, extra_dirs):
        if not (extra / "profiling" / "compute").is_dir():
            raise ConfigError(f"{extra}: not a calibration folder: no profiling/compute/ in it (Vidur's layout, "
                              "which `scripts/profile_gpu.py --out DIR` writes)")
        ops.append(load_ops(extra))
        attention.append(load_attention(extra))
        if (extra / "profiling" / "network").is_dir():
            network.append(load_network(extra))
    cat = lambda frames: pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]  # noqa: E731
    return CalibrationInputs(op_features(cat(ops)), cat(attention), cat(network), d, holdout or Holdout())


def calibrate(inputs: CalibrationInputs, progress=None, only_gpus: tuple[str, ...] | None = None) -> dict:
    """Fit every profiled GPU (or ``only_gpus``); returns the JSON-ready parameter document."""
    h = inputs.holdout
    ops_train = inputs.ops[~h.ops_mask(inputs.ops)]
    att_train = inputs.attention[~h.attention_mask(inputs.attention)] if len(inputs.attention) else inputs.attention
    net_train = inputs.network[~h.network_mask(inputs.network)]
    gpus: dict[str, dict] = {}
    names = [g for g in sorted(ops_train.gpu.unique()) if only_gpus is None or g in only_gpus]
    specs = {}
    for name in names:  # every GPU folder must name a catalog GPU: check before minutes of fitting
        try:
            specs[name] = get_gpu(PROFILED_GPUS.get(name, name))
        except UnknownNameError as e:
            raise ConfigError(f"{e}: profiled GPU folders are named after catalog GPUs (scripts/profile_gpu.py "
                              "--gpu-name); or add the GPU to configs/gpus/gpus.yaml") from None
    for name in names:
        if progress:
            progress(f"fitting {name}")
        spec = specs[name]
        peak, hbm = spec.peak_flops, spec.hbm_bytes_per_s
        sub = ops_train[ops_train.gpu == name]
        entry = {
            "catalog_gpu": spec.name, "peak_flops": peak, "hbm_Bps": hbm, "link_gbps": spec.link_gbps,
            "gemm": fit_gemm(sub[sub.op.isin(GEMM_OPS)], peak, hbm),
            "elementwise": {op: fit_elementwise(sub[sub.op == op], hbm) for op in ELEMENTWISE_OPS
                            if (sub.op == op).any()},
        }
        att = att_train[att_train.gpu == name] if len(att_train) else att_train
        entry["attention"] = fit_attention(att, peak, hbm) if len(att) else None
        net = net_train[net_train.gpu == name]
        entry["collectives"] = fit_collectives(net) if len(net) else {}
        gpus[name] = entry
    # GPUs without their own attention or collective measurements borrow the nearest profiled ones'.
    donor_att = next((g for g in ("a100", "h100") if gpus.get(g, {}).get("attention")), None)
    for name, entry in gpus.items():
        if entry["attention"] is None and donor_att:
            entry["attention"] = gpus[donor_att]["attention"]
            entry["attention_from"] = donor_att
        for key in ("all_reduce", "send_recv_intra_node", "send_recv_inter_node"):
            if key not in entry["collectives"]:
                donor = next((g for g in ("a100", "h100") if key in gpus.get(g, {}).get("collectives", {})), None)
                if donor:
                    entry["collectives"][key] = gpus[donor]["collectives"][key]
                    entry["collectives"][f"{key}_from"] = donor
                    entry["collectives"][f"{key}_link_gbps"] = gpus[donor]["link_gbps"]
    digest = hashlib.sha256(pd.util.hash_pandas_object(inputs.ops[["time_s"]], index=False).values.tobytes()).hexdigest()
    return {
        "schema": SCHEMA_VERSION,
        "generated_by": "python -m oserve_rl perf calibrate (do not edit by hand)",
        "generated_at": _dt.date.today().isoformat(),
        "data_dir_name": inputs.data_dir.name,
        "data_sha256_ops": digest[:16],
        "holdout": {"tp": list(h.tp), "models": list(h.models), "network_every": h.network_every,
                    "attention_every": h.attention_every},
        "knots": {"gemm_tokens": GEMM_TOKEN_KNOTS.tolist(), "gemm_size": GEMM_SIZE_KNOTS.tolist(),
                  "gemm_weight": GEMM_WEIGHT_KNOTS.tolist(), "elementwise": ELEM_KNOTS.tolist(),
                  "attn_pairs": ATTN_PAIR_KNOTS.tolist(), "attn_batch": ATTN_BATCH_KNOTS.tolist()},
        "gpus": gpus,
    }


def write_params(doc: dict, path: Path = PARAMS_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return path

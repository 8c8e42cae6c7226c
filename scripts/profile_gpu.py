#!/usr/bin/env python3
"""Profile one GPU's transformer-layer operators into Vidur-schema calibration CSVs.

Run it once on a GPU you have access to (an H200, say); it writes

    OUT/profiling/compute/<gpu>/<org>/<model>/mlp.csv        every non-attention op of one layer
    OUT/profiling/compute/<gpu>/<org>/<model>/attention.csv  prefill and decode attention
    OUT/profiling/network/<gpu>_<topology>/all_reduce.csv    only with --collectives and >1 GPU
    OUT/profiling/network/<gpu>_<topology>/send_recv.csv     likewise
    OUT/profile_metadata_<gpu>.json                          how the numbers were taken

in exactly the column layout of Microsoft Vidur's profiling data (all
``time_stats.<op>.{min,max,mean,median,std}`` in milliseconds, network ``size``
in bytes), so ``python -m oserve_rl perf calibrate --extra-data-dir OUT`` reads
them next to the shipped tables.

Needs only torch and the standard library, so the file can be copied alone to
a bare GPU machine. Model shapes come from ``oserve_rl.catalog`` when that is
importable and from a small built-in table otherwise; ``--shape`` adds any
other geometry.

Examples:
    python scripts/profile_gpu.py --gpu-name h200 --out calib_h200           # a few minutes on an H200
    python scripts/profile_gpu.py --quick --out /tmp/q                        # < 1 min smoke run
    python scripts/profile_gpu.py --collectives --topology dgx --out calib    # on a multi-GPU node
    python scripts/profile_gpu.py --device cpu --quick \\
        --shape tiny:n_head=4,n_kv_head=2,n_embd=64,n_expanded_embd=128,vocab=256 --out /tmp/t
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

STATS = ("min", "max", "mean", "median", "std")
MLP_OPS = (
    "emb", "input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj",
    "post_attention_layernorm", "mlp_up_proj", "mlp_act", "mlp_down_proj", "add",
)
MLP_KEYS = (
    "n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp",
    "num_tokens", "num_tensor_parallel_workers",
)
# Same op order as Vidur's attention.csv, so the files diff cleanly.
ATTN_OPS = ("attn_input_reshape", "attn_decode", "attn_output_reshape", "attn_prefill")
ATTN_KEYS = (
    "n_embd", "n_q_head", "n_kv_head", "block_size", "num_tensor_parallel_workers", "max_model_len",
    "batch_size", "prefill_chunk_size", "kv_cache_size", "is_prefill", "attention_backend", "profile_method",
)
NET_KEYS = ("rank", "num_workers", "size", "collective", "devices_per_node", "max_devices_per_node")

DEFAULT_MODELS = "llama-2-7b,llama-2-70b"
DEFAULT_TP = "1,2,4,8"
# Vidur's tables are keyed by a KV block size; we time contiguous caches, so it is nominal.
BLOCK_SIZE = 16
ATTENTION_BACKEND = "AttentionBackend.TORCH_SDPA"

try:  # inside the repo, input errors are the project's ConfigError; standalone, a ValueError
    from oserve_rl.errors import ConfigError as _ErrorBase
except Exception:  # noqa: BLE001 - any import problem means "running standalone"
    _ErrorBase = ValueError  # type: ignore[assignment,misc]


class ProfileInputError(_ErrorBase):  # type: ignore[valid-type,misc]
    """A bad command-line value; the message names the flag, the value and what is valid."""


# --------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class LayerShape:
    """One transformer layer's geometry, in Vidur's key-column names."""

    name: str
    org_model: str  # "<org>/<model>" path under compute/<gpu>/, as in Vidur's tree
    n_head: int
    n_kv_head: int
    n_embd: int
    n_expanded_embd: int
    vocab_size: int
    use_gated_mlp: bool = True
    head_dim: int = 0  # 0: n_embd // n_head

    @property
    def d_head(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    def check(self) -> None:
        for f in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size"):
            if getattr(self, f) <= 0:
                raise ProfileInputError(f"shape {self.name!r}: {f} must be a positive integer, got {getattr(self, f)}")
        if self.n_head % self.n_kv_head:
            raise ProfileInputError(f"shape {self.name!r}: n_head {self.n_head} is not a multiple of n_kv_head {self.n_kv_head}")
        if not self.head_dim and self.n_embd % self.n_head:
            raise ProfileInputError(f"shape {self.name!r}: n_embd {self.n_embd} is not divisible by n_head {self.n_head}; pass head_dim=")

    def tp_problem(self, tp: int) -> str | None:
        """Why this layer cannot be sharded over ``tp`` workers, or None if it can."""
        if self.n_head % tp:
            return f"n_head {self.n_head} is not divisible by TP {tp}"
        if self.n_kv_head % tp and tp % self.n_kv_head:
            return f"n_kv_head {self.n_kv_head} neither divides nor is divided by TP {tp}"
        return None


# Fallback for a bare GPU machine without the repo; must agree with configs/models/models.yaml
# (tests check it). Paths are the ones Vidur's tree uses for the same models.
BUILTIN_SHAPES: dict[str, LayerShape] = {
    s.name: s
    for s in (
        LayerShape("llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 32, 4096, 11008, 32000, True),
        LayerShape("llama-2-70b", "meta-llama/Llama-2-70b-hf", 64, 8, 8192, 28672, 32000, True),
        LayerShape("llama-3-8b", "meta-llama/Meta-Llama-3-8B", 32, 8, 4096, 14336, 128256, True),
        LayerShape("llama-3-70b", "meta-llama/Meta-Llama-3-70B", 64, 8, 8192, 28672, 128256, True),
        LayerShape("codellama-34b", "codellama/CodeLlama-34b-Instruct-hf", 64, 8, 8192, 22016, 32000, True),
    )
}
_BUILTIN_BY_PATH = {s.org_model.lower(): s for s in BUILTIN_SHAPES.values()}


def _catalog_shape(name: str) -> LayerShape | None:
    try:
        from oserve_rl.catalog import get_model
    except Exception:  # noqa: BLE001 - no repo (or a broken one): use the built-in table
        return None
    try:
        m = get_model(name)
    except Exception:  # noqa: BLE001 - unknown to the catalog; maybe built-in knows it
        return None
    builtin = BUILTIN_SHAPES.get(m.name)
    if builtin is not None:  # Vidur's folder name, which the calibration reader maps to the catalog name
        org_model = builtin.org_model
    else:  # the reader falls back to the lower-cased folder name, so use the catalog name itself
        org = m.hf_ids[0].split("/")[0] if m.hf_ids and "/" in m.hf_ids[0] else "custom"
        org_model = f"{org}/{m.name}"
    return LayerShape(
        name=m.name, org_model=org_model, n_head=m.num_heads, n_kv_head=m.num_kv_heads,
        n_embd=m.hidden_size, n_expanded_embd=m.ffn_size, vocab_size=m.vocab_size,
        use_gated_mlp=m.gated_mlp, head_dim=m.head_dim or 0,
    )


def resolve_shape(name: str) -> LayerShape:
    """A model name or HF id, from the catalog if importable, else the built-in table."""
    key = name.strip()
    shape = _catalog_shape(key)
    if shape is None:
        shape = BUILTIN_SHAPES.get(key.lower()) or _BUILTIN_BY_PATH.get(key.lower())
    if shape is None:
        valid = sorted(BUILTIN_SHAPES)
        try:
            from oserve_rl.catalog import models

            valid = sorted(models())
        except Exception:  # noqa: BLE001
            pass
        raise ProfileInputError(
            f"--models: unknown model {name!r}; valid: {', '.join(valid)} (or describe it with --shape)"
        )
    shape.check()
    return shape


_SHAPE_FIELDS = {
    "n_head": "n_head", "n_kv_head": "n_kv_head", "n_embd": "n_embd",
    "n_expanded_embd": "n_expanded_embd", "ffn": "n_expanded_embd",
    "vocab": "vocab_size", "vocab_size": "vocab_size",
    "gated": "use_gated_mlp", "use_gated_mlp": "use_gated_mlp", "head_dim": "head_dim",
}


def parse_shape(spec: str) -> LayerShape:
    """``NAME:n_head=..,n_kv_head=..,n_embd=..,n_expanded_embd=..,vocab=..[,gated=true][,head_dim=..]``.

    NAME may be ``org/model`` (the output folder); a bare NAME goes under ``custom/``.
    """
    name, sep, body = spec.partition(":")
    name = name.strip()
    if not sep or not name:
        raise ProfileInputError(f"--shape {spec!r}: expected NAME:key=value,... with keys {', '.join(sorted(_SHAPE_FIELDS))}")
    values: dict[str, Any] = {"use_gated_mlp": True, "head_dim": 0}
    for item in filter(None, (p.strip() for p in body.split(","))):
        k, eq, v = item.partition("=")
        field = _SHAPE_FIELDS.get(k.strip())
        if not eq or field is None:
            raise ProfileInputError(f"--shape {spec!r}: bad item {item!r}; keys are {', '.join(sorted(_SHAPE_FIELDS))}")
        v = v.strip()
        if field == "use_gated_mlp":
            if v.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ProfileInputError(f"--shape {spec!r}: {k} must be true or false, got {v!r}")
            values[field] = v.lower() in ("1", "true", "yes")
        else:
            try:
                values[field] = int(v)
            except ValueError:
                raise ProfileInputError(f"--shape {spec!r}: {k} must be an integer, got {v!r}") from None
    missing = [f for f in ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size") if f not in values]
    if missing:
        raise ProfileInputError(f"--shape {spec!r}: missing {', '.join(missing)}")
    if name.count("/") > 1 or not all(name.split("/")) or any(c in name for c in "\\ :"):
        raise ProfileInputError(f"--shape {spec!r}: NAME must be 'model' or 'org/model' (one folder level), got {name!r}")
    org_model = name if "/" in name else f"custom/{name}"
    shape = LayerShape(name=name.split("/")[-1], org_model=org_model, **values)
    shape.check()
    return shape


# --------------------------------------------------------------------------- grids

def _octave_grid(lo: int, hi: int, per_octave: int, multiple: int) -> list[int]:
    """Points from lo to hi (both kept), ``per_octave`` evenly spaced per doubling, rounded to ``multiple``."""
    out: set[int] = set()
    start = lo
    while start < hi:
        step = max(multiple, start // per_octave)
        out.update(range(start, min(2 * start, hi), step))
        start *= 2
    out.add(hi)
    return sorted(x for x in out if lo <= x <= hi)


def token_grid(max_tokens: int, quick: bool) -> list[int]:
    """num_tokens rows: every small size (decode batches), then 8 per doubling up to max_tokens."""
    if quick:
        grid = [2**k for k in range(0, 31) if 2**k <= max_tokens]
    else:
        small = [1, 2, 3, 4, 5, 6, 7, 8] + list(range(16, 129, 8))
        grid = [t for t in small if t <= max_tokens]
        if max_tokens > 128:
            grid += _octave_grid(128, max_tokens, 8, 8)
    if max_tokens not in grid:
        grid.append(max_tokens)
    return sorted(set(grid))


def prefill_grid(max_model_len: int, quick: bool) -> list[tuple[int, int]]:
    """(prefill_chunk_size, kv_cache_size) pairs with chunk + cached prefix <= max_model_len."""
    lo = min(64, max_model_len)
    chunks = [c for c in ([lo * 4**k for k in range(12)] if quick else _octave_grid(lo, max_model_len, 2, 16)) if c <= max_model_len]
    if max_model_len not in chunks:
        chunks.append(max_model_len)
    fracs = (0.0, 0.5) if quick else (0.0, 0.125, 0.25, 0.5, 0.75)
    prefixes = sorted({int(max_model_len * f) // 16 * 16 for f in fracs})
    return [(c, p) for c in sorted(chunks) for p in prefixes if c + p <= max_model_len]


def decode_grid(max_model_len: int, quick: bool) -> list[tuple[int, int]]:
    """(batch_size, kv_cache_size) pairs; every sequence in the batch has the same context."""
    if quick:
        batches = [1, 8, 32, 128]
        kvs = {min(128, max_model_len - 1), max_model_len // 4, max_model_len - 1}
    else:
        batches = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128]
        kvs = set(_octave_grid(min(32, max_model_len - 1), max_model_len - 1, 2, 16))
    return [(b, kv) for b in batches for kv in sorted(k for k in kvs if k >= 1)]


def collective_sizes(max_bytes: int, quick: bool) -> list[int]:
    """Message sizes in bytes from 2 KiB: powers of two (and 1.5x midpoints unless quick)."""
    sizes: set[int] = set()
    s = 2048
    while s <= max_bytes:
        sizes.add(s)
        if not quick and s * 3 // 2 <= max_bytes:
            sizes.add(s * 3 // 2)
        s *= 2 if not quick else 4
    sizes.add(max_bytes)
    return sorted(x for x in sizes if x >= min(2048, max_bytes))


# --------------------------------------------------------------------------- timing

def time_stats(op: str, samples_ms: Sequence[float]) -> dict[str, float]:
    """Vidur's ``time_stats.<op>.*`` columns; std is the population std (numpy's default)."""
    xs = list(samples_ms)
    return {
        f"time_stats.{op}.min": min(xs),
        f"time_stats.{op}.max": max(xs),
        f"time_stats.{op}.mean": statistics.fmean(xs),
        f"time_stats.{op}.median": statistics.median(xs),
        f"time_stats.{op}.std": statistics.pstdev(xs),
    }


class Timer:
    """Runs an op ``warmup`` times, then times ``repeats`` calls one by one.

    On CUDA each call sits between two CUDA events, after an L2-sized write that
    evicts the op's weights: in a real forward pass the other layers' weights
    have pushed them out, and a hot L2 would flatter small-batch GEMMs.
    """

    def __init__(self, torch: Any, device: Any, warmup: int, repeats: int, flush_l2: bool) -> None:
        self.torch = torch
        self.device = device
        self.warmup = warmup
        self.repeats = repeats
        self.cuda = device.type == "cuda"
        self.flush_buf = None
        if self.cuda and flush_l2:
            l2_bytes = int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 * 2**20)
            self.flush_buf = torch.empty(2 * l2_bytes, dtype=torch.uint8, device=device)

    @property
    def method(self) -> str:
        return "ProfileMethod.CUDA_EVENT" if self.cuda else "ProfileMethod.PERF_COUNTER"

    def measure(self, fn: Callable[[], Any]) -> list[float]:
        for _ in range(self.warmup):
            fn()
        if not self.cuda:
            out = []
            for _ in range(self.repeats):
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
            return out
        ev = self.torch.cuda.Event
        pairs = [(ev(enable_timing=True), ev(enable_timing=True)) for _ in range(self.repeats)]
        for start, end in pairs:
            if self.flush_buf is not None:
                self.flush_buf.zero_()
            start.record()
            fn()
            end.record()
        self.torch.cuda.synchronize(self.device)
        return [start.elapsed_time(end) for start, end in pairs]


# --------------------------------------------------------------------------- compute ops

def _rms_norm(torch: Any, F: Any, eps: float = 1e-5) -> Callable[[Any, Any], Any]:
    if hasattr(F, "rms_norm"):
        return lambda x, w: F.rms_norm(x, (x.shape[-1],), w, eps)

    def norm(x: Any, w: Any) -> Any:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * w

    return norm


def profile_mlp(torch: Any, shape: LayerShape, tp: int, tokens: Sequence[int], timer: Timer, dtype: Any,
                device: Any) -> list[dict[str, Any]]:
    """One mlp.csv row per num_tokens: each op of a layer with weights sharded as at ``tp``."""
    F = torch.nn.functional
    norm = _rms_norm(torch, F)
    d = shape.d_head
    q_heads = shape.n_head // tp
    kv_heads = max(1, shape.n_kv_head // tp)  # vLLM replicates KV heads when TP exceeds them
    ffn = math.ceil(shape.n_expanded_embd / tp)
    vocab = math.ceil(shape.vocab_size / tp)
    t_max = max(tokens)

    def rand(*size: int) -> Any:
        return torch.randn(*size, dtype=dtype, device=device) * 0.02

    w_emb = rand(vocab, shape.n_embd)
    w_norm1 = torch.ones(shape.n_embd, dtype=dtype, device=device)
    w_norm2 = torch.ones(shape.n_embd, dtype=dtype, device=device)
    w_qkv = rand((q_heads + 2 * kv_heads) * d, shape.n_embd)
    w_o = rand(shape.n_embd, q_heads * d)
    w_up = rand((2 if shape.use_gated_mlp else 1) * ffn, shape.n_embd)
    w_down = rand(shape.n_embd, ffn)
    ids_all = torch.randint(0, vocab, (t_max,), device=device)
    pos_all = torch.arange(t_max, device=device)
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    angles = torch.outer(torch.arange(t_max, device=device, dtype=torch.float32), inv_freq)
    cos_cache, sin_cache = angles.cos().to(dtype), angles.sin().to(dtype)
    x_all = rand(t_max, shape.n_embd)
    res_all = rand(t_max, shape.n_embd)
    qkv_all = rand(t_max, (q_heads + 2 * kv_heads) * d)
    attn_all = rand(t_max, q_heads * d)
    up_all = rand(t_max, w_up.shape[0])
    act_all = rand(t_max, ffn)

    def rope(qkv: Any, pos: Any) -> tuple[Any, Any]:
        # NeoX-style rotation of q and k, position lookup included, as vLLM's rotary op does.
        cos, sin = cos_cache[pos].unsqueeze(1), sin_cache[pos].unsqueeze(1)
        n = qkv.shape[0]
        out = []
        for t in (qkv[:, : q_heads * d].view(n, q_heads, d), qkv[:, q_heads * d : (q_heads + kv_heads) * d].view(n, kv_heads, d)):
            x1, x2 = t[..., : d // 2], t[..., d // 2 :]
            out.append(torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1))
        return out[0], out[1]

    def act(h: Any) -> Any:
        if shape.use_gated_mlp:
            return F.silu(h[:, :ffn]) * h[:, ffn:]
        return F.gelu(h, approximate="tanh")

    rows = []
    with torch.inference_mode():
        for t in tokens:
            ids, pos = ids_all[:t], pos_all[:t]
            x, res, qkv, attn, up, a = x_all[:t], res_all[:t], qkv_all[:t], attn_all[:t], up_all[:t], act_all[:t]
            ops: dict[str, Callable[[], Any]] = {
                "emb": lambda: F.embedding(ids, w_emb),
                "input_layernorm": lambda: norm(x, w_norm1),
                "attn_pre_proj": lambda: F.linear(x, w_qkv),
                "attn_rope": lambda: rope(qkv, pos),
                "attn_post_proj": lambda: F.linear(attn, w_o),
                "post_attention_layernorm": lambda: norm(x, w_norm2),
                "mlp_up_proj": lambda: F.linear(x, w_up),
                "mlp_act": lambda: act(up),
                "mlp_down_proj": lambda: F.linear(a, w_down),
                "add": lambda: x + res,
            }
            row: dict[str, Any] = {}
            for op in MLP_OPS:
                row.update(time_stats(op, timer.measure(ops[op])))
            row.update(
                n_head=shape.n_head, n_kv_head=shape.n_kv_head, n_embd=shape.n_embd,
                n_expanded_embd=shape.n_expanded_embd, vocab_size=shape.vocab_size,
                use_gated_mlp=shape.use_gated_mlp, num_tokens=t, num_tensor_parallel_workers=tp,
            )
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- attention

def _reference_attention(torch: Any, q: Any, k: Any, v: Any) -> Any:
    """Plain fp32 causal attention, lower-right aligned (the chunk is the last L of S tokens)."""
    group = q.shape[1] // k.shape[1]
    k, v = k.float().repeat_interleave(group, 1), v.float().repeat_interleave(group, 1)
    L, S = q.shape[2], k.shape[2]
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    keep = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
    return torch.softmax(scores.masked_fill(~keep, float("-inf")), -1) @ v


def pick_prefill_impl(torch: Any, device: Any, dtype: Any, q_heads: int, kv_heads: int, d: int) -> tuple[str, Callable]:
    """The fastest causal chunked-prefill SDPA call this torch supports, checked for correctness.

    Returns (name, make) where ``make(q, k, v)`` does the per-shape set-up (GQA
    expansion, masks) outside the timed region and returns the timed callable.
    torch's ``is_causal`` is top-left aligned, which is wrong once a cached
    prefix makes S > L, so a lower-right CausalBias or an explicit mask is used.
    """
    F = torch.nn.functional
    try:
        from torch.nn.attention.bias import causal_lower_right
    except Exception:  # noqa: BLE001 - torch < 2.2
        causal_lower_right = None
    group = q_heads // kv_heads

    def make_variant(gqa: bool, bias: bool) -> Callable:
        def make(q: Any, k: Any, v: Any) -> Callable[[], Any]:
            L, S = q.shape[2], k.shape[2]
            kw: dict[str, Any] = {"enable_gqa": True} if gqa and group > 1 else {}
            if not gqa and group > 1:
                k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
            if L == S:
                return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, **kw)
            if bias:
                mask = causal_lower_right(L, S)
            else:
                mask = torch.ones(L, S, dtype=torch.bool, device=q.device).tril(diagonal=S - L)
            return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kw)

        return make

    # Fastest first: a CausalBias keeps the flash kernel (an explicit mask forces a slower one),
    # which matters more than the cost of reading group-times expanded K/V in compute-bound prefill.
    candidates = []
    if causal_lower_right is not None:
        candidates += [("sdpa_gqa_causal_lower_right", make_variant(True, True)),
                       ("sdpa_expand_causal_lower_right", make_variant(False, True))]
    candidates += [("sdpa_gqa_bool_mask", make_variant(True, False)),
                   ("sdpa_expand_bool_mask", make_variant(False, False))]
    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, q_heads, 8, d, generator=g, device=device).to(dtype)
    k = torch.randn(1, kv_heads, 24, d, generator=g, device=device).to(dtype)
    v = torch.randn(1, kv_heads, 24, d, generator=g, device=device).to(dtype)
    ref = _reference_attention(torch, q, k, v)
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    errors = []
    for name, make in candidates:
        try:
            with torch.inference_mode():
                out = make(q, k, v)()
            err = (out.float() - ref).abs().max().item()
        except Exception as e:  # noqa: BLE001 - this torch lacks the feature; try the next
            errors.append(f"{name}: {type(e).__name__}: {e}")
            continue
        if err <= tol:
            return name, make
        errors.append(f"{name}: max error {err:.3g} > {tol}")
    raise RuntimeError("no scaled_dot_product_attention variant gave correct chunked-prefill results: " + "; ".join(errors))


def profile_attention(torch: Any, shape: LayerShape, tp: int, max_model_len: int, quick: bool, timer: Timer,
                      dtype: Any, device: Any, prefill_impl: tuple[str, Callable]) -> list[dict[str, Any]]:
    """attention.csv rows: prefill (batch 1, chunk over a cached prefix) and decode (batch x context)."""
    F = torch.nn.functional
    d = shape.d_head
    q_heads = shape.n_head // tp
    kv_heads = max(1, shape.n_kv_head // tp)
    group = q_heads // kv_heads
    qkv_width = (q_heads + 2 * kv_heads) * d
    keys = dict(
        n_embd=shape.n_embd, n_q_head=shape.n_head, n_kv_head=shape.n_kv_head, block_size=BLOCK_SIZE,
        num_tensor_parallel_workers=tp, max_model_len=max_model_len,
        attention_backend=ATTENTION_BACKEND, profile_method=timer.method,
    )
    empty = {f"time_stats.{op}.{s}": "" for op in ATTN_OPS for s in STATS}
    rows: list[dict[str, Any]] = []
    _, make_prefill = prefill_impl

    def split(qkv: Any, n: int) -> tuple[Any, Any, Any]:
        q = qkv[:, : q_heads * d].view(n, q_heads, d)
        k = qkv[:, q_heads * d : (q_heads + kv_heads) * d].view(n, kv_heads, d)
        v = qkv[:, (q_heads + kv_heads) * d :].view(n, kv_heads, d)
        return q, k, v

    def add_row(measure: Callable[[], dict[str, Any]], **where: Any) -> None:
        # One shape that runs out of memory (a long --max-model-len on a small GPU) costs
        # that row, not the whole lent-GPU session.
        try:
            row = measure()
        except RuntimeError as e:
            print(f"[{shape.name}] tp={tp}: attention row {where} skipped: {str(e).strip().splitlines()[0][:200]}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return
        row.update(keys, **where)
        rows.append(row)

    with torch.inference_mode():
        # Prefill: one sequence, its chunk's K/V written after the cached prefix.
        k_cache = torch.randn(1, kv_heads, max_model_len, d, dtype=dtype, device=device)
        v_cache = torch.randn_like(k_cache)
        for chunk, prefix in prefill_grid(max_model_len, quick):
            qkv = torch.randn(chunk, qkv_width, dtype=dtype, device=device)
            q_buf = torch.empty(1, q_heads, chunk, d, dtype=dtype, device=device)

            def write_cache(qkv: Any = qkv, q_buf: Any = q_buf, chunk: int = chunk, prefix: int = prefix) -> None:
                q, k, v = split(qkv, chunk)
                q_buf[0].copy_(q.transpose(0, 1))
                k_cache[0, :, prefix : prefix + chunk].copy_(k.transpose(0, 1))
                v_cache[0, :, prefix : prefix + chunk].copy_(v.transpose(0, 1))

            def measure(write_cache: Callable = write_cache, q_buf: Any = q_buf, chunk: int = chunk,
                        prefix: int = prefix) -> dict[str, Any]:
                write_cache()
                attend = make_prefill(q_buf, k_cache[:, :, : prefix + chunk], v_cache[:, :, : prefix + chunk])
                out = attend()
                row = dict(empty)
                row.update(time_stats("attn_input_reshape", timer.measure(write_cache)))
                row.update(time_stats("attn_prefill", timer.measure(attend)))
                row.update(time_stats("attn_output_reshape", timer.measure(lambda: out[0].transpose(0, 1).reshape(chunk, q_heads * d))))
                return row

            add_row(measure, batch_size=1, prefill_chunk_size=chunk, kv_cache_size=prefix, is_prefill=True)
        del k_cache, v_cache

        # Decode: a batch of one-token queries, each against its own cache of kv tokens.
        # GQA is packed as vLLM/FlashDecoding do: the query heads sharing a KV head become
        # that head's query rows (exact for one query token, and no K/V expansion).
        grid = decode_grid(max_model_len, quick)
        if grid:
            b_max = max(b for b, _ in grid)
            s_max = max(kv for _, kv in grid)
            k_cache = torch.randn(b_max, kv_heads, s_max, d, dtype=dtype, device=device)
            v_cache = torch.randn_like(k_cache)
            for batch, kv in grid:
                qkv = torch.randn(batch, qkv_width, dtype=dtype, device=device)
                q_buf = torch.empty(batch, kv_heads, group, d, dtype=dtype, device=device)

                def write_cache(qkv: Any = qkv, q_buf: Any = q_buf, batch: int = batch, kv: int = kv) -> None:
                    q, k, v = split(qkv, batch)
                    q_buf.copy_(q.view(batch, kv_heads, group, d))
                    k_cache[:batch, :, kv - 1].copy_(k)
                    v_cache[:batch, :, kv - 1].copy_(v)

                def measure(write_cache: Callable = write_cache, q_buf: Any = q_buf, batch: int = batch,
                            kv: int = kv) -> dict[str, Any]:
                    kc, vc = k_cache[:batch, :, :kv], v_cache[:batch, :, :kv]
                    attend = lambda: F.scaled_dot_product_attention(q_buf, kc, vc)  # noqa: E731
                    out = attend()
                    row = dict(empty)
                    row.update(time_stats("attn_input_reshape", timer.measure(write_cache)))
                    row.update(time_stats("attn_decode", timer.measure(attend)))
                    row.update(time_stats("attn_output_reshape", timer.measure(lambda: out.reshape(batch, q_heads * d))))
                    return row

                add_row(measure, batch_size=batch, prefill_chunk_size=0, kv_cache_size=kv, is_prefill=False)
    return rows


# --------------------------------------------------------------------------- collectives

def _collective_worker(rank: int, world: int, init_file: str, result_file: str, cfg: dict[str, Any]) -> None:
    import torch
    import torch.distributed as dist

    cuda = cfg["device"] == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    device = torch.device(f"cuda:{rank}" if cuda else "cpu")
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[cfg["dtype"]]
    elem = torch.tensor([], dtype=dtype).element_size()
    groups = {n: dist.new_group(list(range(n))) for n in cfg["worker_counts"]}  # every rank must create each
    flag = torch.zeros(1, device=device)
    rows: list[dict[str, Any]] = []

    def sync(group: Any) -> None:
        dist.all_reduce(flag, group=group)
        if cuda:
            torch.cuda.synchronize(device)

    def timed(fn: Callable[[], Any], group: Any) -> list[float]:
        for _ in range(cfg["warmup"]):
            fn()
        out = []
        for _ in range(cfg["repeats"]):
            sync(group)  # start all members together so the time is the collective's, not a straggler's
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize(device)
                out.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                out.append((time.perf_counter() - t0) * 1e3)
        return out

    for collective in ("all_reduce", "send_recv"):
        for n, group in groups.items():
            if collective == "send_recv" and n != 2:
                continue
            if rank < n:
                for size in cfg["sizes"]:
                    buf = torch.ones(max(1, size // elem), dtype=dtype, device=device)
                    if collective == "all_reduce":
                        fn = lambda buf=buf, group=group: dist.all_reduce(buf, group=group)  # noqa: E731
                    elif rank == 0:
                        fn = lambda buf=buf: dist.send(buf, dst=1)  # noqa: E731
                    else:
                        fn = lambda buf=buf: dist.recv(buf, src=0)  # noqa: E731
                    samples = timed(fn, group)
                    if rank == 0:
                        row = time_stats(collective, samples)
                        row.update(rank=0, num_workers=n, size=buf.numel() * elem, collective=collective,
                                   devices_per_node=n, max_devices_per_node=world)
                        rows.append(row)
            sync(None)
    if rank == 0:
        Path(result_file).write_text(json.dumps(rows))
    dist.destroy_process_group()


def run_collectives(args: argparse.Namespace, torch: Any, out_dir: Path, gpu_name: str) -> bool:
    """Profile all_reduce / send_recv across processes; False if skipped or failed (with a message)."""
    cuda = args.device == "cuda"
    world = args.collective_workers or (torch.cuda.device_count() if cuda else 2)
    if cuda and torch.cuda.device_count() < 2:
        print(f"[collectives] skipped: {torch.cuda.device_count()} GPU visible, all_reduce/send_recv need at least 2")
        return False
    worker_counts = [n for n in (2, 4, 8, 16, 32) if n <= world]
    sizes = collective_sizes(args.collective_max_bytes, args.quick)
    cfg = dict(device=args.device, dtype=args.dtype, worker_counts=worker_counts, sizes=sizes,
               warmup=args.warmup, repeats=args.repeats)
    print(f"[collectives] {world} workers ({'NCCL' if cuda else 'gloo, CPU test mode'}), "
          f"groups {worker_counts}, {len(sizes)} sizes {sizes[0]}..{sizes[-1]} bytes")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "rows.json")
        try:
            import torch.multiprocessing as mp

            mp.spawn(_collective_worker, args=(world, init_file, result_file, cfg), nprocs=world, join=True)
            rows = json.loads(Path(result_file).read_text())
        except Exception as e:  # noqa: BLE001 - report and keep the compute tables already written
            print(f"[collectives] failed: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
            return False
    net_dir = out_dir / "profiling" / "network" / f"{gpu_name}_{args.topology}"
    for collective in ("all_reduce", "send_recv"):
        sel = [r for r in rows if r["collective"] == collective]
        cols = [f"time_stats.{collective}.{s}" for s in STATS] + list(NET_KEYS)
        write_csv(net_dir / f"{collective}.csv", cols, sel, index=True)
    print(f"[collectives] {len(rows)} rows in {time.perf_counter() - t0:.1f}s -> {net_dir}")
    return True


# --------------------------------------------------------------------------- output

def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]], index: bool = False) -> None:
    """Write atomically, so an interrupted run never leaves a half-written table."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(([""] if index else []) + list(columns))
        for i, r in enumerate(rows):
            w.writerow(([i] if index else []) + [r.get(c, "") for c in columns])
    os.replace(tmp, path)


def mlp_columns() -> list[str]:
    return [f"time_stats.{op}.{s}" for op in MLP_OPS for s in STATS] + list(MLP_KEYS)


def attention_columns() -> list[str]:
    return [f"time_stats.{op}.{s}" for op in ATTN_OPS for s in STATS] + list(ATTN_KEYS)


def default_gpu_name(torch: Any, device: Any) -> str:
    """'NVIDIA H200' -> 'h200', 'NVIDIA A100-SXM4-80GB' -> 'a100'; 'cpu' on CPU."""
    if device.type != "cuda":
        return "cpu"
    words = torch.cuda.get_device_name(device).lower().replace("nvidia", "").split()
    return (words[0].split("-")[0].replace("_", "") if words else "gpu") or "gpu"


# --------------------------------------------------------------------------- CLI

def _int_list(flag: str, text: str) -> list[int]:
    try:
        vals = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ProfileInputError(f"{flag} {text!r}: expected comma-separated positive integers") from None
    if not vals or any(v <= 0 for v in vals):
        raise ProfileInputError(f"{flag} {text!r}: expected comma-separated positive integers")
    return sorted(set(vals))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="profile_gpu.py",
        description=(
            "Time every operator of one transformer layer (and attention, and optionally NCCL collectives) "
            "on this GPU and write the results in Microsoft Vidur's calibration-CSV layout "
            "(OUT/profiling/compute/<gpu>/<org>/<model>/{mlp,attention}.csv; times in ms). "
            "TP>1 rows shard the weights as at that TP degree on this one GPU; the TP all-reduce is not included "
            "(profile it with --collectives). Needs only torch."
        ),
        epilog=(
            "Defaults are sized for a few minutes on one H200 (estimated 1-2); --quick for well under one. "
            "CPU runs (--device cpu) are for testing the script: they use fp32, tiny grids and "
            "time.perf_counter, and are marked ProfileMethod.PERF_COUNTER / in the metadata JSON."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", required=True, help="output directory (created); mirrors Vidur's data layout")
    p.add_argument("--gpu-name", help="folder name for this GPU, e.g. h200 (default: from the device name)")
    p.add_argument("--models", default=DEFAULT_MODELS,
                   help="comma-separated catalog names or HF ids (e.g. llama-2-7b,meta-llama/Llama-2-70b-hf); '' for none")
    p.add_argument("--shape", action="append", default=[], metavar="NAME:k=v,...",
                   help="extra layer geometry, repeatable: NAME:n_head=..,n_kv_head=..,n_embd=..,n_expanded_embd=..,"
                        "vocab=..[,gated=true][,head_dim=..]; NAME may be org/model")
    p.add_argument("--tp", default=DEFAULT_TP, help="tensor-parallel degrees to emulate")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="default: bf16 on cuda, fp32 on cpu")
    p.add_argument("--quick", action="store_true", help="coarser grids and fewer repeats (smoke run)")
    p.add_argument("--max-num-tokens", type=int, help="largest num_tokens row in mlp.csv (default 4096; cpu 32)")
    p.add_argument("--max-model-len", type=int, help="longest context in attention.csv (default 4096; cpu 128)")
    p.add_argument("--warmup", type=int, help="untimed calls per measurement (default 5, quick 3, cpu 1)")
    p.add_argument("--repeats", type=int, help="timed calls per measurement (default 20, quick 10, cpu 3)")
    p.add_argument("--no-attention", action="store_true", help="skip attention.csv")
    p.add_argument("--time-limit-s", type=float,
                   help="stop starting new (model, TP) blocks after this many seconds; what was measured is kept")
    p.add_argument("--no-l2-flush", action="store_true", help="do not evict L2 between timed CUDA calls")
    p.add_argument("--collectives", action="store_true",
                   help="also profile all_reduce/send_recv over NCCL between the visible GPUs (skipped with one GPU)")
    p.add_argument("--topology", default="dgx", help="network folder suffix: network/<gpu>_<topology>/ (Vidur: dgx, pairwise_nvlink)")
    p.add_argument("--collective-workers", type=int, help="processes for --collectives (default: all GPUs; cpu: 2, gloo)")
    p.add_argument("--collective-max-bytes", type=int, default=256 * 2**20, help="largest collective message in bytes")
    return p


def _resolve_args(args: argparse.Namespace, torch: Any) -> None:
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu":
            print("no CUDA device visible: running on CPU (test mode; these times are not calibration data)")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ProfileInputError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False); use --device cpu to test")
    cpu = args.device == "cpu"
    args.dtype = args.dtype or ("fp32" if cpu else "bf16")
    defaults = dict(max_num_tokens=32 if cpu else 4096, max_model_len=128 if cpu else 4096,
                    warmup=1 if cpu else (3 if args.quick else 5), repeats=3 if cpu else (10 if args.quick else 20))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
        if getattr(args, k) <= 0:
            raise ProfileInputError(f"--{k.replace('_', '-')}: must be a positive integer, got {getattr(args, k)}")
    if args.collective_workers is not None:
        if args.collective_workers < 2:
            raise ProfileInputError(f"--collective-workers {args.collective_workers}: need at least 2")
        if args.device == "cuda" and args.collective_workers > torch.cuda.device_count():
            raise ProfileInputError(f"--collective-workers {args.collective_workers}: only {torch.cuda.device_count()} GPUs are visible")
    if args.time_limit_s is not None and args.time_limit_s <= 0:
        raise ProfileInputError(f"--time-limit-s: must be positive, got {args.time_limit_s}")
    if args.max_model_len < 2:
        raise ProfileInputError(f"--max-model-len: must be at least 2, got {args.max_model_len}")
    if args.collective_max_bytes < 2048:
        raise ProfileInputError(f"--collective-max-bytes: must be at least 2048, got {args.collective_max_bytes}")
    # The calibration reader splits network/<gpu>_<topology> at the first '_'.
    if args.gpu_name is not None and (not args.gpu_name.strip() or any(c in args.gpu_name for c in "/\\ _")):
        raise ProfileInputError(f"--gpu-name {args.gpu_name!r}: must be a plain folder name without '_', '/' or spaces, such as h200")
    if not args.topology or any(c in args.topology for c in "/\\ "):
        raise ProfileInputError(f"--topology {args.topology!r}: must be a plain name such as dgx or pairwise_nvlink")


def _shapes(args: argparse.Namespace) -> list[LayerShape]:
    shapes = [resolve_shape(m) for m in args.models.split(",") if m.strip()]
    shapes += [parse_shape(s) for s in args.shape]
    if not shapes:
        raise ProfileInputError("nothing to profile: --models is empty and no --shape was given")
    paths = [s.org_model for s in shapes]
    if len(set(paths)) != len(paths):
        raise ProfileInputError(f"--models/--shape: the same model is listed twice ({', '.join(paths)})")
    return shapes


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        tps = _int_list("--tp", args.tp)
        shapes = _shapes(args)
        try:
            import torch
        except ImportError:
            raise ProfileInputError("torch is not installed: pip install torch (the only dependency)") from None
        _resolve_args(args, torch)
    except ProfileInputError as e:
        parser.error(str(e))  # one line on stderr, exit status 2

    torch.manual_seed(0)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    gpu_name = args.gpu_name or default_gpu_name(torch, device)
    out_dir = Path(args.out)
    compute_dir = out_dir / "profiling" / "compute" / gpu_name
    timer = Timer(torch, device, args.warmup, args.repeats, flush_l2=not args.no_l2_flush)
    tokens = token_grid(args.max_num_tokens, args.quick)
    started = _dt.datetime.now(_dt.timezone.utc)
    meta: dict[str, Any] = {
        "gpu_name": gpu_name,
        "device": args.device,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "timing": "cuda_event" if timer.cuda else "perf_counter (CPU test mode: not calibration data)",
        "profile_method": timer.method,
        "l2_flush": timer.flush_buf is not None,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "dtype": args.dtype,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "quick": args.quick,
        "num_tokens": tokens,
        "max_model_len": args.max_model_len,
        "tp": tps,
        "command": [sys.executable, *sys.argv] if argv is None else ["profile_gpu.py", *argv],
        "started_utc": started.isoformat(timespec="seconds"),
        "models": {},
        "notes": "mlp.csv TP>1 rows emulate the shard on one GPU without the TP all-reduce; ops run in eager "
                 "torch (RMSNorm, RoPE, SiLU*mul are not fused as in vLLM); attention uses torch SDPA with "
                 "contiguous KV caches (block_size is nominal).",
    }
    meta_path = out_dir / f"profile_metadata_{gpu_name}.json"

    def save_meta() -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")

    prefill_cache: dict[tuple[int, int, int], tuple[str, Callable]] = {}
    blocks = [(s, tp) for s in shapes for tp in tps]
    print(f"profiling {len(shapes)} model(s) x TP {tps} on {meta['device_name']} ({args.device}, {args.dtype}); "
          f"{len(tokens)} num_tokens rows per TP; output {out_dir}", flush=True)
    t_start = time.perf_counter()
    done = 0
    for shape in shapes:
        model_dir = compute_dir / shape.org_model
        mlp_rows: list[dict[str, Any]] = []
        attn_rows: list[dict[str, Any]] = []
        meta["models"][shape.name] = {"path": str(model_dir.relative_to(out_dir)), "shape": asdict(shape), "tp": []}
        t_model = time.perf_counter()
        model_blocks = [b for b in blocks if b[0] is shape]
        for i, (_, tp) in enumerate(model_blocks):
            if args.time_limit_s is not None and time.perf_counter() - t_start > args.time_limit_s:
                meta.setdefault("not_profiled_time_limit", []).append(f"{shape.name} tp={tp}")
                print(f"[{shape.name}] tp={tp}: not profiled, --time-limit-s {args.time_limit_s:g} reached", flush=True)
                done += 1
                continue
            problem = shape.tp_problem(tp)
            if problem:
                print(f"[{shape.name}] tp={tp}: skipped ({problem})", flush=True)
                done += 1
                continue
            t0 = time.perf_counter()
            mlp_rows += profile_mlp(torch, shape, tp, tokens, timer, dtype, device)
            n_attn = 0
            if not args.no_attention:
                q_heads, kv_heads = shape.n_head // tp, max(1, shape.n_kv_head // tp)
                key = (q_heads, kv_heads, shape.d_head)
                if key not in prefill_cache:
                    prefill_cache[key] = pick_prefill_impl(torch, device, dtype, *key)
                rows = profile_attention(torch, shape, tp, args.max_model_len, args.quick, timer, dtype, device, prefill_cache[key])
                attn_rows += rows
                n_attn = len(rows)
                meta["models"][shape.name]["prefill_impl"] = prefill_cache[key][0]
            meta["models"][shape.name]["tp"].append(tp)
            # Rewrite after every TP block: a run cut short by a time limit keeps what it measured.
            write_csv(model_dir / "mlp.csv", mlp_columns(), mlp_rows)
            if attn_rows:
                write_csv(model_dir / "attention.csv", attention_columns(), attn_rows)
            save_meta()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            done += 1
            now = time.perf_counter()
            model_left = (now - t_model) / (i + 1) * (len(model_blocks) - i - 1)
            total_left = (now - t_start) / done * (len(blocks) - done)
            print(f"[{shape.name}] tp={tp}: {len(tokens)} mlp rows, {n_attn} attention rows in {now - t0:.1f}s; "
                  f"ETA model {model_left:.0f}s, all {total_left:.0f}s", flush=True)
        if mlp_rows:
            print(f"[{shape.name}] done in {time.perf_counter() - t_model:.1f}s -> {model_dir}", flush=True)

    ok = True
    if args.collectives:
        ok = run_collectives(args, torch, out_dir, gpu_name) or (args.device == "cuda" and torch.cuda.device_count() < 2)
    meta["finished_utc"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    save_meta()
    print(f"finished in {meta['elapsed_s']}s; metadata {meta_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

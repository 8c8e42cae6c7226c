"""What one replica's hardware costs: iteration times and memory.

``ReplicaPerf`` answers, for a replica (model x GPU type x TP x PP), how long one
engine iteration takes for a batch that mixes prefill chunks and decode
sequences, and how many KV-cache tokens fit. It is the single performance model
that the simulator, the heuristics and the environment share.

Iteration time (one forward pass over the batch; PP stages run one after the
other for a single batch, so latency is the sum of stages)::

    t = linear(n_tokens)                      # L x (norms, QKV, RoPE, O, MLP, adds) + embedding
      + 2 L x all_reduce(n_tokens x hidden)   # TP > 1
      + lm_head(n_seqs) + engine_overhead(n_seqs)
      + L x attn_prefill(sum of causal pairs) # all prefill chunks in one varlen kernel
      + L x (a(b) + s(b) x C)                 # decode attention, b seqs, C total context
      + (pp - 1) x send_recv(n_tokens x hidden)

Every term except decode attention depends only on counts (tokens, sequences,
causal pairs), so the whole table over token counts is precomputed once per
replica config and each call is a few list look-ups (``iteration_s_agg``).

Closed form for the simulator: for a pure-decode batch of b sequences with total
context C, ``t = base(b) + slope(b) * C`` **exactly** (decode attention is
modelled as linear in the KV bytes read, with an efficiency that depends on the
batch size only). The sum over k consecutive steps is therefore exact within
the model; what it gives up against hardware is the linear-in-context decode
attention (its error on the held-out attention rows is in the validation
report). Pipeline parallelism is modelled for latency only: vLLM keeps up to
``pp`` micro-batches in flight, which this model does not credit.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from oserve_rl.catalog import GPUSpec, ModelSpec, get_gpu, get_model
from oserve_rl.errors import ConfigError, DoesNotFitError
from oserve_rl.perf import fit as F
from oserve_rl.perf.kernel import IterationCost
from oserve_rl.perf.ops import ELEMENTWISE_OPS, GEMM_OPS, LAYER_OP_COUNTS, LayerGeometry

GiB = 1024**3


@dataclass(frozen=True)
class EngineConfig:
    """vLLM engine arguments that change cost or capacity (vLLM v1 defaults)."""

    max_num_batched_tokens: int = 2048
    max_num_seqs: int = 256
    block_size: int = 16
    gpu_memory_utilization: float = 0.9
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    max_model_len: int | None = None

    def context_tokens(self, model: ModelSpec | str) -> int:
        """Longest prompt + output a replica of ``model`` accepts: ``max_model_len``, else the model's context."""
        return int(self.max_model_len or (get_model(model) if isinstance(model, str) else model).max_context)

    def __post_init__(self):
        checks = [
            ("max_num_batched_tokens", self.max_num_batched_tokens >= 1),
            ("max_num_seqs", self.max_num_seqs >= 1),
            ("block_size", self.block_size in (8, 16, 32, 64, 128)),
            ("gpu_memory_utilization", 0 < self.gpu_memory_utilization <= 1),
            ("max_model_len", self.max_model_len is None or self.max_model_len >= 1),
        ]
        for name, ok in checks:
            if not ok:
                valid = {"block_size": "one of 8, 16, 32, 64, 128", "gpu_memory_utilization": "in (0, 1]"}
                raise ConfigError(f"engine config: {name}={getattr(self, name)!r} is invalid "
                                  f"(must be {valid.get(name, 'positive')})")


@lru_cache(maxsize=4)
def load_params(path: str | None = None) -> dict:
    p = Path(path) if path else F.PARAMS_PATH
    if not p.exists():
        raise ConfigError(f"{p}: calibration parameters missing; run `python -m oserve_rl perf calibrate`")
    doc = json.loads(p.read_text())
    if doc.get("schema") != F.SCHEMA_VERSION:
        raise ConfigError(f"{p}: schema {doc.get('schema')} but this code reads schema {F.SCHEMA_VERSION}; "
                          "re-run `python -m oserve_rl perf calibrate`")
    return doc


def _check_whole(where: str, name: str, value, low: int = 1) -> None:
    """A whole-number argument (tp, pp): 2.7 is refused, not truncated to 2."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if ok:
        ok = math.isfinite(value) and float(value).is_integer() and value >= low
    if not ok:
        raise ConfigError(f"{where}: {name} must be a whole number >= {low}, got {value!r}")


def _check_link(where: str, name: str, value) -> None:
    """An interconnect bandwidth: None (the GPU's own) or finite Gbit/s > 0."""
    if value is None:
        return
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
            or not (math.isfinite(value) and value > 0)):
        raise ConfigError(f"{where}: {name} must be a finite bandwidth in Gbit/s > 0 (or None for the GPU's own), "
                          f"got {value!r}")


def _check_sizes(where: str, **sizes) -> None:
    """Token counts and batch sizes of the public helpers: finite numbers >= 0 (a negative or NaN size would give a
    negative, zero or NaN time). Not used on the simulator's per-iteration path (``cost`` / ``iteration_s_agg``)."""
    for name, v in sizes.items():
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) or not (0 <= v < math.inf):
            raise ConfigError(f"{where}: {name} must be a finite number >= 0, got {v!r}")


def check_parallelism(model: ModelSpec, tp: int, pp: int) -> None:
    """vLLM's own rules: TP splits attention heads and the FFN evenly; KV heads split or replicate."""
    where = f"{model.name} at tp={tp}, pp={pp}"
    if tp < 1 or pp < 1:
        raise ConfigError(f"{where}: tp and pp must be >= 1")
    if model.num_heads % tp:
        valid = [t for t in (1, 2, 4, 8, 16) if model.num_heads % t == 0 and model.ffn_size % t == 0]
        raise ConfigError(f"{where}: tp={tp} does not divide num_heads={model.num_heads} (valid tp: {valid})")
    if model.num_kv_heads % tp and tp % model.num_kv_heads:
        raise ConfigError(f"{where}: tp={tp} neither divides nor is a multiple of num_kv_heads={model.num_kv_heads}")
    if model.ffn_size % tp:
        raise ConfigError(f"{where}: tp={tp} does not divide ffn_size={model.ffn_size}")
    if pp > model.num_layers:
        raise ConfigError(f"{where}: pp={pp} exceeds num_layers={model.num_layers}")


class ReplicaPerf:
    """Calibrated cost model of one replica; build it with :func:`replica_perf` (cached)."""

    TABLE_TOKENS = 16384  # precomputed token counts; larger batches are computed on demand
    # CPU-side cost of one engine step (schedule, prepare inputs, sample, detokenise). Not in the
    # calibration data: typical of vLLM v1 with CUDA graphs. Override per instance if you measured yours.
    step_overhead_s = 0.0015
    per_seq_overhead_s = 4e-6

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tp: int = 1, pp: int = 1, link_gbps: float | None = None,
                 inter_node_gbps: float | None = None, params: dict | None = None):
        where = f"replica perf of {getattr(model, 'name', model)} on {getattr(gpu, 'name', gpu)}"
        _check_whole(where, "tp", tp)
        _check_whole(where, "pp", pp)
        _check_link(where, "link_gbps", link_gbps)
        _check_link(where, "inter_node_gbps", inter_node_gbps)
        check_parallelism(model, tp, pp)
        self.model, self.gpu, self.tp, self.pp = model, gpu, tp, pp
        doc = params or load_params()
        if gpu.calibrated_as not in doc["gpus"]:
            raise ConfigError(f"calibration has no curves for {gpu.calibrated_as!r} (GPU {gpu.name}); "
                              f"available: {sorted(doc['gpus'])}")
        self._p = p = doc["gpus"][gpu.calibrated_as]
        self.calibrated_as = gpu.calibrated_as
        self.geom = LayerGeometry.of(model, tp)
        self.layers = model.num_layers
        self._peak, self._hbm = gpu.peak_flops, gpu.hbm_bytes_per_s
        # Collectives: the profiled GPU's curve, scaled by this link's bandwidth over the profiled one's.
        self.link_gbps = link_gbps or gpu.link_gbps
        self._link_scale = self.link_gbps / p["link_gbps"]
        self.inter_node_gbps = inter_node_gbps
        ap = p["attention"]
        # Prefill attention efficiency: piecewise linear in log2(causal pairs) between these knots.
        self._pair_knots = [float(k) for k in F.ATTN_PAIR_KNOTS]
        self._pair_eff = F.sigmoid(np.array(ap["prefill"]["pair_logits"])).tolist()
        self._pair_c0 = ap["prefill"]["c0_s"]
        # The attention curve is a share of the profiled GPU's peak; carry it over in FlashAttention throughput.
        donor = get_gpu(F.PROFILED_GPUS[p.get("attention_from", gpu.calibrated_as)])
        self._attn_peak = gpu.attention_flops * donor.peak_flops / donor.attention_flops
        self._q_flops_per_pair = 4.0 * self.geom.q_heads_per_gpu * self.geom.head_dim
        self._linear = self._linear_table(np.arange(self.TABLE_TOKENS + 1))
        self._linear_list = self._linear.tolist()
        b = np.arange(0, 4097)
        base, slope = F.attn_decode_coeffs(ap["decode"], self._hbm, np.maximum(b, 1), self.geom.kv_bytes_per_token())
        base[0] = 0.0
        self._dec_base = (self.layers * base).tolist()
        self._dec_slope = (self.layers * slope).tolist()
        self.cost = self._iteration_cost()

    def _iteration_cost(self) -> IterationCost:
        # The per-iteration hot path (compiled where built); the overheads are read now, so an instance
        # that overrides step_overhead_s or per_seq_overhead_s after construction calls this again.
        return IterationCost(self, self._linear_list, self._dec_base, self._dec_slope, self._pair_knots,
                             self._pair_eff, self._pair_c0, self._q_flops_per_pair, self._attn_peak,
                             self.layers, self.step_overhead_s, self.per_seq_overhead_s)

    # ------------------------------------------------------------ vectorised components
    def _gemm(self, op, n, weight_copies=1.0, tokens_for_eff=None):
        f, w, a = self.geom.gemm_cost(op, n, weight_copies)
        k, nn = self.geom.gemm_kn(op)
        eff_tokens = n if tokens_for_eff is None else tokens_for_eff
        t = F.gemm_time_s(self._p["gemm"], self._peak, self._hbm, np.maximum(eff_tokens, 1), f, w, a, k * nn)
        return np.where(np.asarray(n) > 0, t, 0.0)

    def _elementwise(self, op, n):
        t = F.elementwise_time_s(self._p["elementwise"][op], self._hbm, self.geom.elementwise_bytes(op, np.maximum(n, 1)))
        return np.where(np.asarray(n) > 0, t, 0.0)

    def layer_op_times_s(self, num_tokens) -> dict[str, np.ndarray]:
        """Per-op time of one layer (plus 'emb' once) for ``num_tokens`` tokens; MoE-aware."""
        n = np.asarray(num_tokens, dtype=np.float64)
        out = {}
        m = self.model
        for op in GEMM_OPS:
            if op in ("mlp_up_proj", "mlp_down_proj") and m.num_experts > 1:
                # Tokens spread over experts: weights read = experts touched, FLOPs = active experts.
                e, k = m.num_experts, m.experts_per_token
                touched = e * (1.0 - (1.0 - k / e) ** n)
                out[op] = self._gemm(op, n * k, weight_copies=touched, tokens_for_eff=n * k / np.maximum(touched, 1))
            else:
                out[op] = self._gemm(op, n)
        for op in ELEMENTWISE_OPS:
            out[op] = self._elementwise(op, n)
        return out

    def allreduce_s(self, size_bytes, workers=None):
        workers = workers or self.tp
        if workers <= 1:
            return np.zeros_like(np.asarray(size_bytes, dtype=np.float64))
        return F.allreduce_time_s(self._p["collectives"]["all_reduce"], self._link_scale, size_bytes, workers)

    def send_recv_s(self, size_bytes, inter_node: bool = False):
        c = self._p["collectives"]
        if inter_node and "send_recv_inter_node" in c:
            scale = (self.inter_node_gbps * 1e9 / c["send_recv_inter_node"]["bw_Bps"]) if self.inter_node_gbps else 1.0
            return F.send_recv_time_s(c["send_recv_inter_node"], scale, size_bytes)
        return F.send_recv_time_s(c["send_recv_intra_node"], self._link_scale, size_bytes)

    def _linear_table(self, n):
        ops = self.layer_op_times_s(n)
        per_layer = sum(LAYER_OP_COUNTS[op] * t for op, t in ops.items() if op in LAYER_OP_COUNTS)
        t = self.layers * per_layer + ops["emb"]
        act_bytes = n * self.model.hidden_size * self.model.dtype_bytes
        t = t + 2 * self.layers * self.allreduce_s(act_bytes) * (n > 0)
        if self.pp > 1:
            t = t + (self.pp - 1) * self.send_recv_s(act_bytes) * (n > 0)
        return t

    def lm_head_s(self, num_seqs):
        return self._gemm("lm_head", np.asarray(num_seqs, dtype=np.float64))

    def attn_prefill_s(self, pairs: float) -> float:
        """All layers' attention for prefill chunks totalling ``pairs`` causal pairs."""
        return self.cost.attn_prefill_s(pairs)

    # ------------------------------------------------------------ the simulator's interface
    def iteration_s_agg(self, num_tokens: int, num_seqs: int, prefill_attn_pairs: float, decode_seqs: int,
                        decode_context_tokens: int) -> float:
        """One iteration of ``num_tokens`` tokens over ``num_seqs`` sequences: prefill chunks totalling
        ``prefill_attn_pairs`` causal pairs and ``decode_seqs`` decodes over ``decode_context_tokens`` of
        context (module doc). Table look-ups: ``IterationCost`` in ``kernel.py``."""
        return self.cost.iteration_s_agg(num_tokens, num_seqs, prefill_attn_pairs, decode_seqs,
                                         decode_context_tokens)

    def linear_s(self, num_tokens: int) -> float:
        """The token-count part of an iteration (linear layers, collectives), beyond the precomputed table too."""
        if num_tokens <= self.TABLE_TOKENS:
            return self._linear_list[num_tokens]
        return float(self._linear_table(np.array([num_tokens]))[0])

    def iteration_s(self, prefill_tokens, prefill_context_tokens, decode_context_tokens) -> float:
        pt = np.asarray(prefill_tokens, dtype=np.int64)
        pc = np.asarray(prefill_context_tokens, dtype=np.int64)
        dc = np.asarray(decode_context_tokens, dtype=np.int64)
        if (pt <= 0).any() or (pc < 0).any() or (dc < 0).any():
            raise ConfigError("iteration_s: prefill_tokens must be > 0 and context tokens >= 0")
        pairs = float((pt * (pc + (pt + 1) / 2.0)).sum())
        return self.iteration_s_agg(int(pt.sum() + len(dc)), int(len(pt) + len(dc)), pairs, int(len(dc)), int(dc.sum()))

    def decode_step_coeffs(self, batch_size: int) -> tuple[float, float]:
        """(base_s, per_context_token_s): a pure-decode step of ``batch_size`` seqs with total context C
        takes exactly ``base_s + per_context_token_s * C`` (equal to ``iteration_s_agg``)."""
        b = int(batch_size)
        if b <= 0:
            return 0.0, 0.0
        return self.iteration_s_agg(b, b, 0.0, b, 0), (self._dec_slope[b] if b < len(self._dec_slope)
                                                        else self.decode_attn_coeffs(b)[1])

    def decode_steps_s(self, batch_size: int, total_context_tokens: int, k: int) -> float:
        """Closed-form time of k consecutive pure-decode steps (context grows by ``batch_size`` per step)."""
        _check_sizes("decode_steps_s", batch_size=batch_size, total_context_tokens=total_context_tokens, k=k)
        return self._decode_steps_s(batch_size, total_context_tokens, k)

    def _decode_steps_s(self, batch_size: int, total_context_tokens: int, k: int) -> float:
        base, slope = self.decode_step_coeffs(batch_size)
        return k * base + slope * (k * total_context_tokens + batch_size * k * (k - 1) / 2.0)

    def decode_attn_coeffs(self, b: int) -> tuple[float, float]:
        """(base_s, per_context_token_s) of all layers' decode attention for ``b`` sequences."""
        base, slope = F.attn_decode_coeffs(self._p["attention"]["decode"], self._hbm, b, self.geom.kv_bytes_per_token())
        return float(self.layers * base), float(self.layers * slope)

    def lm_head_scalar(self, num_seqs: int) -> float:
        """``lm_head_s`` of one count as a float (``IterationCost`` memoises it)."""
        return float(self.lm_head_s(num_seqs)) if num_seqs > 0 else 0.0

    def __setattr__(self, name: str, value) -> None:
        super().__setattr__(name, value)
        if name in ("step_overhead_s", "per_seq_overhead_s") and "cost" in self.__dict__:
            self.cost = self._iteration_cost()

    def prefill_s(self, prompt_tokens: int, batch_size: int = 1) -> float:
        """One iteration that prefills ``batch_size`` prompts of ``prompt_tokens`` tokens (no chunking)."""
        _check_sizes("prefill_s", prompt_tokens=prompt_tokens)
        _check_whole("prefill_s", "batch_size", batch_size)
        return self.iteration_s([prompt_tokens] * batch_size, [0] * batch_size, [])

    def decode_s(self, batch_size: int, context_tokens: int) -> float:
        """One decode step of ``batch_size`` sequences each holding ``context_tokens``."""
        _check_sizes("decode_s", batch_size=batch_size, context_tokens=context_tokens)
        return self.iteration_s_agg(batch_size, batch_size, 0.0, batch_size, batch_size * context_tokens)

    def standalone_latency_s(self, input_tokens: int, output_tokens: int, engine: EngineConfig | None = None) -> float:
        """E2E latency of one request alone on an idle replica (chunked prefill, then decode)."""
        _check_sizes("standalone_latency_s", input_tokens=input_tokens, output_tokens=output_tokens)
        engine = engine or EngineConfig()
        chunk, done, t = engine.max_num_batched_tokens, 0, 0.0
        while done < input_tokens:
            c = min(chunk, input_tokens - done)
            t += self.iteration_s_agg(c, 1, c * (done + (c + 1) / 2.0), 0, 0)
            done += c
        k = max(int(output_tokens) - 1, 0)
        return t + (self._decode_steps_s(1, int(input_tokens), k) if k else 0.0)  # sizes checked above

    # ------------------------------------------------------------ memory (vLLM's accounting)
    @property
    def num_gpus(self) -> int:
        return self.tp * self.pp

    @property
    def weight_bytes_per_gpu(self) -> int:
        return int(math.ceil(self.model.total_params * self.model.dtype_bytes / (self.tp * self.pp)))

    @property
    def kv_bytes_per_token_per_gpu(self) -> int:
        layers_per_gpu = math.ceil(self.layers / self.pp)
        return int(2 * layers_per_gpu * self.geom.kv_heads_per_gpu * self.geom.head_dim * self.model.dtype_bytes)

    def activation_reserve_bytes(self, engine: EngineConfig) -> int:
        """Peak non-weight, non-KV memory vLLM's profiling run sees, per GPU.

        A forward pass of ``max_num_batched_tokens`` tokens keeps the residual
        stream, QKV and the MLP's widest intermediate alive; the sampler holds
        FP32 logits for ``max_num_seqs`` rows; CUDA context, NCCL buffers and
        CUDA graphs add a fixed ~0.75 GiB outside PyTorch's allocator.
        """
        m, n = self.model, engine.max_num_batched_tokens
        widest = max(self.geom.gemm_kn("mlp_up_proj")[1], self.geom.gemm_kn("attn_pre_proj")[1])
        act = n * (4 * m.hidden_size + 2 * widest) * m.dtype_bytes
        logits = engine.max_num_seqs * -(-m.vocab_size // self.tp) * 4
        return int(act + logits + 0.75 * GiB)

    def kv_capacity_tokens(self, engine: EngineConfig | None = None) -> int:
        """KV-cache tokens that fit, as vLLM sizes its cache::

            blocks = floor((total_memory * gpu_memory_utilization - weights - activation_reserve)
                           / (block_size * kv_bytes_per_token_per_gpu));   tokens = blocks * block_size

        per GPU (every GPU of the replica holds the same share), where
        kv_bytes_per_token_per_gpu = 2 (K, V) x layers/pp x max(1, kv_heads/tp) x head_dim x dtype_bytes.
        """
        engine = engine or EngineConfig()
        budget = self.gpu.usable_memory_bytes * engine.gpu_memory_utilization
        free = budget - self.weight_bytes_per_gpu - self.activation_reserve_bytes(engine)
        blocks = int(free // (engine.block_size * self.kv_bytes_per_token_per_gpu)) if free > 0 else 0
        return max(blocks, 0) * engine.block_size

    def check_fits(self, engine: EngineConfig | None = None) -> None:
        engine = engine or EngineConfig()
        tokens = self.kv_capacity_tokens(engine)
        if tokens <= 0:
            budget = self.gpu.usable_memory_bytes * engine.gpu_memory_utilization
            raise DoesNotFitError(
                f"{self.model.name} on {self.num_gpus} x {self.gpu.name} (tp={self.tp}, pp={self.pp}) does not fit: "
                f"weights {self.weight_bytes_per_gpu / GiB:.1f} GiB + activations "
                f"{self.activation_reserve_bytes(engine) / GiB:.1f} GiB per GPU exceed "
                f"{budget / GiB:.1f} GiB (gpu_memory_utilization={engine.gpu_memory_utilization}); "
                "use more GPUs per replica (larger tp or pp) or a GPU with more memory")
        need = engine.max_model_len or 0
        if need and tokens < need:
            raise DoesNotFitError(
                f"{self.model.name} on {self.num_gpus} x {self.gpu.name} (tp={self.tp}, pp={self.pp}): KV cache holds "
                f"{tokens} tokens, fewer than max_model_len={need}")

    def __repr__(self) -> str:
        return f"ReplicaPerf({self.model.name}, {self.gpu.name}, tp={self.tp}, pp={self.pp})"


@lru_cache(maxsize=512)
def _cached(model: str, gpu: str, tp: int, pp: int, link_gbps, inter_node_gbps) -> ReplicaPerf:
    return ReplicaPerf(get_model(model), get_gpu(gpu), tp, pp, link_gbps, inter_node_gbps)


def replica_perf(model: str | ModelSpec, gpu: str | GPUSpec, tp: int = 1, pp: int = 1,
                 link_gbps: float | None = None, inter_node_gbps: float | None = None) -> ReplicaPerf:
    """The cost model of one replica config (cached: build it as often as you like)."""
    m, g = get_model(model), get_gpu(gpu)
    where = f"replica perf of {m.name} on {g.name}"
    _check_whole(where, "tp", tp)
    _check_whole(where, "pp", pp)
    _check_link(where, "link_gbps", link_gbps)
    _check_link(where, "inter_node_gbps", inter_node_gbps)
    return _cached(m.name, g.name, int(tp), int(pp), link_gbps, inter_node_gbps)

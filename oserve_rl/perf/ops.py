"""Shapes of a transformer layer's operators: FLOPs and bytes per GPU.

The one place that says what each operator computes and moves. The fitter
(against Vidur's measured tables) and the predictor (for any model and TP) both
call these functions, so a fitted efficiency curve means the same thing in both.
All functions are vectorised over ``num_tokens`` (numpy arrays or scalars).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GEMM_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
ELEMENTWISE_OPS = ("emb", "input_layernorm", "attn_rope", "post_attention_layernorm", "mlp_act", "add")
# Ops measured once per layer in Vidur's mlp.csv; "emb" runs once per iteration, "add" twice per layer.
LAYER_OP_COUNTS = {
    "input_layernorm": 1, "attn_pre_proj": 1, "attn_rope": 1, "attn_post_proj": 1,
    "post_attention_layernorm": 1, "mlp_up_proj": 1, "mlp_act": 1, "mlp_down_proj": 1, "add": 2,
}


@dataclass(frozen=True)
class LayerGeometry:
    """What one GPU holds of one layer at tensor-parallel degree ``tp``."""

    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    gated: bool
    tp: int
    dtype_bytes: int = 2
    # MoE: experts per GPU that a batch touches is computed by the caller; dense = 1.
    experts_total: int = 1
    experts_active: int = 1

    @classmethod
    def of(cls, model, tp: int) -> "LayerGeometry":
        return cls(
            hidden=model.hidden_size, num_heads=model.num_heads, num_kv_heads=model.num_kv_heads,
            head_dim=model.d_head, ffn=model.ffn_size, vocab=model.vocab_size, gated=model.gated_mlp,
            tp=tp, dtype_bytes=model.dtype_bytes, experts_total=model.num_experts,
            experts_active=model.experts_per_token,
        )

    # GEMM dimensions (K = input width, N = output width per GPU).
    def gemm_kn(self, op: str) -> tuple[int, int]:
        t, h, d = self.tp, self.hidden, self.head_dim
        if op == "attn_pre_proj":
            return h, (self.num_heads + 2 * self.num_kv_heads) * d // t
        if op == "attn_post_proj":
            return self.num_heads * d // t, h
        if op == "mlp_up_proj":
            return h, (2 if self.gated else 1) * self.ffn // t
        if op == "mlp_down_proj":
            return self.ffn // t, h
        if op == "lm_head":
            return h, -(-self.vocab // t)
        raise KeyError(op)

    def gemm_cost(self, op: str, num_tokens, weight_copies=1.0):
        """(flops, weight_bytes, activation_bytes) of one GEMM over ``num_tokens`` rows.

        ``weight_copies`` > 1 for MoE expert GEMMs: distinct experts whose weights are read.
        """
        k, n = self.gemm_kn(op)
        m = np.asarray(num_tokens, dtype=np.float64)
        flops = 2.0 * m * k * n
        w_bytes = np.asarray(weight_copies, dtype=np.float64) * k * n * self.dtype_bytes + 0 * m
        a_bytes = m * (k + n) * self.dtype_bytes
        return flops, w_bytes, a_bytes

    def elementwise_bytes(self, op: str, num_tokens):
        m = np.asarray(num_tokens, dtype=np.float64)
        b, h = self.dtype_bytes, self.hidden
        if op in ("input_layernorm", "post_attention_layernorm", "emb"):
            return 2.0 * m * h * b
        if op == "attn_rope":
            return 2.0 * m * (self.num_heads + self.num_kv_heads) * self.head_dim / self.tp * b
        if op == "mlp_act":
            return (3.0 if self.gated else 2.0) * m * self.ffn / self.tp * b
        if op == "add":
            return 3.0 * m * h * b
        raise KeyError(op)

    # Attention (FlashAttention-style): causal prefill FLOPs and decode KV bytes.
    @property
    def q_heads_per_gpu(self) -> int:
        return self.num_heads // self.tp

    @property
    def kv_heads_per_gpu(self) -> int:
        return max(1, self.num_kv_heads // self.tp)

    def prefill_attn_flops(self, pairs):
        """FLOPs of QK^T and PV over ``pairs`` causal (query, key) pairs."""
        return 4.0 * self.q_heads_per_gpu * self.head_dim * np.asarray(pairs, dtype=np.float64)

    def kv_bytes_per_token(self) -> float:
        """K and V of one token in one layer on one GPU."""
        return 2.0 * self.kv_heads_per_gpu * self.head_dim * self.dtype_bytes


def causal_pairs(chunk_tokens, context_tokens):
    """Query-key pairs of a causal prefill chunk on top of ``context_tokens`` cached tokens."""
    c = np.asarray(chunk_tokens, dtype=np.float64)
    return c * (np.asarray(context_tokens, dtype=np.float64) + (c + 1.0) / 2.0)

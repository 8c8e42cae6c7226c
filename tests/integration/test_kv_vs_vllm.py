"""KV-cache capacity: our accounting against vLLM's own code, run in the vLLM venv.

vLLM sizes its cache in two steps: the worker measures the memory that is
not KV (weights, the profiling run's activation peak, memory outside
PyTorch) and leaves ``total x gpu_memory_utilization`` minus that for KV;
``get_kv_cache_config_from_groups`` then divides it by the bytes of one block
over all attention layers. The first step needs a GPU and the real weights,
so the test hands vLLM the same non-KV budget our model computes and checks
that vLLM's second step (its block size, page layout and division) gives our
block count, for several models, GPUs and TP degrees. The memory that is not
KV stays an estimate (documented in ``ReplicaPerf.activation_reserve_bytes``).

Needs .venv-vllm (scripts/setup_live.sh); skipped with that reason otherwise.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

VLLM_PYTHON = Path(__file__).resolve().parents[2] / ".venv-vllm" / "bin" / "python"

pytestmark = [pytest.mark.integration]

CASES = [  # (model, gpu, tp, pp)
    ("llama-2-70b", "a100-80gb", 2, 1),  # the figure
    ("llama-2-70b", "h100-sxm", 4, 1),
    ("llama-3-8b", "a100-40gb", 1, 1),
    ("qwen2.5-72b", "h200", 4, 1),
    ("llama-2-70b", "a100-80gb", 2, 2),  # PP halves the layers each GPU holds
]

VLLM_SIDE = textwrap.dedent("""
    import json, sys, torch
    from vllm.config import CacheConfig, VllmConfig
    from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheGroupSpec

    out = []
    for c in json.load(sys.stdin):
        spec = FullAttentionSpec(block_size=c["block_size"], num_kv_heads=c["kv_heads_per_gpu"],
                                 head_size=c["head_dim"], dtype=torch.bfloat16)
        names = [f"model.layers.{i}.self_attn.attn" for i in range(c["layers_per_gpu"])]
        vc = VllmConfig(cache_config=CacheConfig(block_size=c["block_size"],
                                                 gpu_memory_utilization=c["gpu_memory_utilization"]))
        vc.cache_config.kv_cache_layout = "NHD"  # what the engine core resolves for full attention
        cfg = get_kv_cache_config_from_groups(vc, [KVCacheGroupSpec(names, spec)], c["available_bytes"])
        out.append({"num_blocks": cfg.num_blocks, "page_size_bytes": spec.page_size_bytes})
    print(json.dumps(out))
""")


def test_kv_capacity_matches_vllm_accounting():
    if not VLLM_PYTHON.exists():
        pytest.skip(f"{VLLM_PYTHON} missing: run scripts/setup_live.sh")
    from oserve_rl.perf import EngineConfig, replica_perf

    eng = EngineConfig(gpu_memory_utilization=0.9)
    ours, payload = [], []
    for model, gpu, tp, pp in CASES:
        perf = replica_perf(model, gpu, tp=tp, pp=pp)
        available = (perf.gpu.usable_memory_bytes * eng.gpu_memory_utilization - perf.weight_bytes_per_gpu
                     - perf.activation_reserve_bytes(eng))
        payload.append({"block_size": eng.block_size, "kv_heads_per_gpu": perf.geom.kv_heads_per_gpu,
                        "head_dim": perf.geom.head_dim, "layers_per_gpu": -(-perf.layers // pp),
                        "gpu_memory_utilization": eng.gpu_memory_utilization, "available_bytes": int(available)})
        ours.append(perf)
    res = subprocess.run([str(VLLM_PYTHON), "-c", VLLM_SIDE], input=json.dumps(payload), capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    for (model, gpu, tp, pp), perf, v, c in zip(CASES, ours, theirs, payload):
        assert v["page_size_bytes"] * c["layers_per_gpu"] == eng.block_size * perf.kv_bytes_per_token_per_gpu, model
        got = perf.kv_capacity_tokens(eng)
        print(f"KV {model} {gpu} tp={tp} pp={pp}: ours {got:,} tokens, vLLM {v['num_blocks'] * eng.block_size:,}")
        assert got == v["num_blocks"] * eng.block_size, (model, gpu, tp, pp)

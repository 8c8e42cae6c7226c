"""Read measured operator timings laid out like Vidur's profiling tree.

    DIR/profiling/compute/<gpu>/<org>/<model>/mlp.csv     per-layer non-attention ops
    DIR/profiling/network/<gpu>_<topology>/{all_reduce,send_recv}.csv
    DIR/legacy_attention_*/attention.csv (or DIR/profiling/compute/<gpu>/**/attention.csv)

All times are milliseconds in the files; this module returns seconds.
``scripts/profile_gpu.py`` writes the same layout, so a newly measured GPU is
read by the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from oserve_rl.errors import ConfigError
from oserve_rl.perf.ops import GEMM_OPS, ELEMENTWISE_OPS

ENV_VAR = "OSERVE_CALIBRATION_DIR"
_KEYS = ["n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp", "num_tokens",
         "num_tensor_parallel_workers"]

# Vidur's model folder names -> our catalog names.
MODEL_DIR_NAMES = {
    "Llama-2-7b-hf": "llama-2-7b", "Llama-2-70b-hf": "llama-2-70b", "Meta-Llama-3-8B": "llama-3-8b",
    "Meta-Llama-3-70B": "llama-3-70b", "CodeLlama-34b-Instruct-hf": "codellama-34b",
    "internlm-20b": "internlm-20b", "Qwen-72B": "qwen-72b", "phi-2": "phi-2",
}


def find_calibration_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The measured-data folder: ``explicit``, $OSERVE_CALIBRATION_DIR, or ../shared/calibration/vidur."""
    candidates = []
    if explicit:
        candidates.append(Path(explicit))
    elif os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]))
    else:
        here = Path(__file__).resolve()
        for parent in [Path.cwd(), *here.parents]:
            candidates.append(parent / ".." / "shared" / "calibration" / "vidur")
            candidates.append(parent / "shared" / "calibration" / "vidur")
    for c in candidates:
        if (c / "profiling" / "compute").is_dir():
            return c.resolve()
    tried = ", ".join(str(c) for c in candidates[:4])
    raise ConfigError(
        f"calibration data not found (tried {tried}); pass --data-dir DIR or set {ENV_VAR} to a folder "
        "holding profiling/compute/<gpu>/<org>/<model>/mlp.csv (Vidur's layout)"
    )


def _need(df: pd.DataFrame, cols, path: Path) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ConfigError(f"{path}: missing columns {missing}")


def load_ops(data_dir: Path) -> pd.DataFrame:
    """Long table: gpu, model, op, num_tokens, tp, geometry columns, time_s (median)."""
    frames = []
    for path in sorted((data_dir / "profiling" / "compute").glob("*/*/*/mlp.csv")):
        gpu, model_dir = path.parts[-4], path.parts[-2]
        df = pd.read_csv(path)
        _need(df, _KEYS, path)
        for op in GEMM_OPS + ELEMENTWISE_OPS:
            col = f"time_stats.{op}.median"
            if col not in df.columns:
                continue
            part = df[_KEYS].copy()
            part["time_s"] = df[col].to_numpy() / 1e3
            part["op"] = op
            part["gpu"] = gpu
            part["model"] = MODEL_DIR_NAMES.get(model_dir, model_dir.lower())
            frames.append(part)
    if not frames:
        raise ConfigError(f"{data_dir}: no profiling/compute/*/*/*/mlp.csv files")
    out = pd.concat(frames, ignore_index=True).rename(columns={"num_tensor_parallel_workers": "tp"})
    # Duplicate (config, tokens) rows exist in the files: keep their median.
    keys = ["gpu", "model", "op", "tp", "num_tokens", "n_head", "n_kv_head", "n_embd", "n_expanded_embd",
            "vocab_size", "use_gated_mlp"]
    out = out.groupby(keys, as_index=False)["time_s"].median()
    return out[out.time_s > 0].reset_index(drop=True)


def load_attention(data_dir: Path) -> pd.DataFrame:
    """gpu, n_embd, n_q_head, n_kv_head, tp, batch_size, chunk, kv_cache_size, is_prefill, time_s."""
    frames = []
    paths = sorted(data_dir.glob("legacy_attention_*/attention.csv")) + sorted(
        (data_dir / "profiling" / "compute").glob("*/**/attention.csv"))
    for path in paths:
        df = pd.read_csv(path)
        _need(df, ["n_embd", "n_q_head", "n_kv_head", "num_tensor_parallel_workers", "batch_size",
                   "prefill_chunk_size", "kv_cache_size", "is_prefill"], path)
        gpu = path.parent.name.split("_")[2] if path.parent.name.startswith("legacy_attention_") else path.parts[-4]
        prefill = df["is_prefill"].astype(str).str.lower() == "true"
        t = df["time_stats.attn_prefill.median"].where(prefill, df["time_stats.attn_decode.median"])
        frames.append(pd.DataFrame({
            "gpu": gpu, "n_embd": df.n_embd, "n_q_head": df.n_q_head, "n_kv_head": df.n_kv_head,
            "tp": df.num_tensor_parallel_workers, "batch_size": df.batch_size,
            "chunk": df.prefill_chunk_size, "kv_cache_size": df.kv_cache_size, "is_prefill": prefill,
            "time_s": t / 1e3,
        }))
    if not frames:
        return pd.DataFrame(columns=["gpu", "n_embd", "n_q_head", "n_kv_head", "tp", "batch_size", "chunk",
                                     "kv_cache_size", "is_prefill", "time_s"])
    out = pd.concat(frames, ignore_index=True)
    return out[out.time_s > 0].reset_index(drop=True)


def load_network(data_dir: Path) -> pd.DataFrame:
    """gpu, topology, collective, num_workers, devices_per_node, size_bytes, time_s (median over ranks)."""
    frames = []
    for path in sorted((data_dir / "profiling" / "network").glob("*/*.csv")):
        gpu, _, topology = path.parent.name.partition("_")
        df = pd.read_csv(path)
        coll = path.stem
        _need(df, ["num_workers", "size", "devices_per_node", f"time_stats.{coll}.median"], path)
        frames.append(pd.DataFrame({
            "gpu": gpu, "topology": topology, "collective": coll, "num_workers": df.num_workers,
            "devices_per_node": df.devices_per_node, "size_bytes": df["size"],
            "time_s": df[f"time_stats.{coll}.median"] / 1e3,
        }))
    if not frames:
        raise ConfigError(f"{data_dir}: no profiling/network/*/*.csv files")
    out = pd.concat(frames, ignore_index=True)
    keys = ["gpu", "topology", "collective", "num_workers", "devices_per_node", "size_bytes"]
    return out.groupby(keys, as_index=False)["time_s"].median()

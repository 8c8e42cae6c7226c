"""GPU, model and cluster catalogs: YAML under ``configs/``, validated on load.

Unknown keys are rejected and every error names the file and field, so a typo
in a catalog never silently becomes a default.

    >>> from oserve_rl.catalog import get_gpu, get_model, get_cluster
    >>> get_model("meta-llama/Llama-2-70b-hf").name
    'llama-2-70b'
    >>> get_gpu("h100").name
    'h100-sxm'
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError, model_validator

from oserve_rl.errors import ConfigError, UnknownNameError

GiB = 1024**3


def configs_dir() -> Path:
    """The ``configs/`` folder (installed as ``oserve_rl.configs``)."""
    try:
        import importlib.resources as ir

        return Path(str(ir.files("oserve_rl.configs")))
    except ModuleNotFoundError:  # running from a source tree that is not installed
        return Path(__file__).resolve().parents[2] / "configs"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GPUSpec(_Strict):
    name: str
    aliases: tuple[str, ...] = ()
    arch: Literal["ampere", "ada", "hopper", "blackwell", "cdna3"]
    bf16_tflops: PositiveFloat
    attention_tflops: PositiveFloat | None = None
    memory_gb: PositiveFloat
    usable_memory_gib: PositiveFloat
    hbm_gbps: PositiveFloat
    link: str
    link_gbps: PositiveFloat
    price_per_gpu_hour: float = Field(ge=0)
    # A profiled GPU folder in the calibration data (a100, h100, a40, or one measured with scripts/profile_gpu.py).
    calibrated_as: str

    @property
    def peak_flops(self) -> float:
        return self.bf16_tflops * 1e12

    @property
    def attention_flops(self) -> float:
        """Achievable FlashAttention throughput (FLOP/s); see gpus.yaml."""
        return (self.attention_tflops or self.bf16_tflops * 210 / 312) * 1e12

    @property
    def hbm_bytes_per_s(self) -> float:
        return self.hbm_gbps * 1e9

    @property
    def usable_memory_bytes(self) -> int:
        return int(self.usable_memory_gib * GiB)


class ModelSpec(_Strict):
    name: str
    hf_ids: tuple[str, ...] = ()
    num_layers: PositiveInt
    hidden_size: PositiveInt
    num_heads: PositiveInt
    num_kv_heads: PositiveInt
    head_dim: PositiveInt | None = None
    ffn_size: PositiveInt
    vocab_size: PositiveInt
    max_context: PositiveInt
    dtype_bytes: PositiveInt = 2
    gated_mlp: bool = True
    num_experts: PositiveInt = 1
    experts_per_token: PositiveInt = 1

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; set head_dim")
        if self.experts_per_token > self.num_experts:
            raise ValueError(f"experts_per_token {self.experts_per_token} > num_experts {self.num_experts}")
        return self

    @property
    def d_head(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads

    @property
    def qkv_size(self) -> int:
        """Output width of the fused QKV projection."""
        return (self.num_heads + 2 * self.num_kv_heads) * self.d_head

    @property
    def mlp_mats(self) -> int:
        return 3 if self.gated_mlp else 2

    def layer_params(self, active: bool = False) -> int:
        attn = self.hidden_size * self.qkv_size + self.num_heads * self.d_head * self.hidden_size
        experts = self.experts_per_token if active else self.num_experts
        mlp = experts * self.mlp_mats * self.hidden_size * self.ffn_size
        router = self.hidden_size * self.num_experts if self.num_experts > 1 else 0
        return attn + mlp + router + 2 * self.hidden_size

    @property
    def total_params(self) -> int:
        """All weights: layers, input embedding and (untied) LM head."""
        return self.num_layers * self.layer_params() + 2 * self.vocab_size * self.hidden_size

    @property
    def active_params(self) -> int:
        """Weights touched per token (differs from total only for MoE)."""
        return self.num_layers * self.layer_params(active=True) + 2 * self.vocab_size * self.hidden_size

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for one token across all layers, whole model (not per GPU)."""
        return 2 * self.num_layers * self.num_kv_heads * self.d_head * self.dtype_bytes


class NodeGroup(_Strict):
    gpu: str
    count: PositiveInt = 1
    gpus_per_node: PositiveInt = 8
    intra_node_gbps: PositiveFloat | None = None


class ClusterSpec(_Strict):
    name: str
    nodes: tuple[NodeGroup, ...]
    inter_node_gbps: PositiveFloat = 25.0

    @model_validator(mode="after")
    def _check(self) -> "ClusterSpec":
        if not self.nodes:
            raise ValueError("a cluster needs at least one node group")
        for g in self.nodes:
            get_gpu(g.gpu)  # raises UnknownNameError with suggestions
        return self

    def node_list(self) -> list[tuple[GPUSpec, int, float]]:
        """One entry per physical node: (gpu, gpus_per_node, intra_node_gbps)."""
        out = []
        for g in self.nodes:
            gpu = get_gpu(g.gpu)
            for _ in range(g.count):
                out.append((gpu, g.gpus_per_node, g.intra_node_gbps or gpu.link_gbps))
        return out

    @property
    def num_gpus(self) -> int:
        return sum(g.count * g.gpus_per_node for g in self.nodes)

    def gpus_by_type(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.nodes:
            name = get_gpu(g.gpu).name
            out[name] = out.get(name, 0) + g.count * g.gpus_per_node
        return out


def _fmt_validation(err: ValidationError, source: str, entry: str) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        field = f"{entry}.{loc}" if loc else entry
        msg = "unknown key (not allowed)" if e["type"] == "extra_forbidden" else e["msg"]
        parts.append(f"{field}: {msg}" + (f" (got {e['input']!r})" if e["type"] != "extra_forbidden" and "input" in e and not isinstance(e["input"], dict) else ""))
    return f"{source}: " + "; ".join(parts)


def _read_yaml(path: Path) -> Any:
    from oserve_rl.yamlio import read_yaml

    return read_yaml(path)


def _load_section(path: Path, section: str, cls: type[BaseModel]) -> dict[str, Any]:
    data = _read_yaml(path)
    if not isinstance(data, dict) or set(data) != {section}:
        raise ConfigError(f"{path}: expected one top-level key {section!r}, got {list(data) if isinstance(data, dict) else type(data).__name__}")
    out = {}
    for name, body in (data[section] or {}).items():
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: {section}.{name} must be a mapping, got {body!r}")
        try:
            out[str(name).lower()] = cls(name=str(name).lower(), **body)
        except ValidationError as e:
            raise ConfigError(_fmt_validation(e, str(path), f"{section}.{name}")) from None
        except (UnknownNameError, ConfigError) as e:
            raise ConfigError(f"{path}: {section}.{name}: {e}") from None
        except ValueError as e:
            raise ConfigError(f"{path}: {section}.{name}: {e}") from None
    return out


@lru_cache(maxsize=None)
def gpus() -> dict[str, GPUSpec]:
    return _load_section(configs_dir() / "gpus" / "gpus.yaml", "gpus", GPUSpec)


@lru_cache(maxsize=None)
def models() -> dict[str, ModelSpec]:
    return _load_section(configs_dir() / "models" / "models.yaml", "models", ModelSpec)


@lru_cache(maxsize=None)
def clusters() -> dict[str, ClusterSpec]:
    return _load_section(configs_dir() / "clusters" / "clusters.yaml", "clusters", ClusterSpec)


@lru_cache(maxsize=None)
def _alias_index(section: str) -> dict[str, str]:
    """Name and alias (lower case) -> catalog name. Built once: get_gpu runs on simulation hot paths
    (prices and placements at every env step)."""
    return _index(gpus(), "aliases") if section == "gpus" else _index(models(), "hf_ids")


def _index(items: dict[str, Any], alias_attr: str) -> dict[str, str]:
    idx = {}
    for name, spec in items.items():
        idx[name] = name
        for a in getattr(spec, alias_attr):
            idx[a.lower()] = name
    return idx


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    if isinstance(name, GPUSpec):
        return name
    g = gpus()
    idx = _alias_index("gpus")
    key = str(name).strip().lower()
    if key not in idx:
        raise UnknownNameError("GPU", name, idx)
    return g[idx[key]]


def get_model(name: str | ModelSpec) -> ModelSpec:
    if isinstance(name, ModelSpec):
        return name
    m = models()
    idx = _alias_index("models")
    key = str(name).strip().lower()
    if key not in idx:
        raise UnknownNameError("model", name, list(m))
    return m[idx[key]]


def get_cluster(name_or_path: str | Path | ClusterSpec) -> ClusterSpec:
    """A preset name, or a YAML file holding one cluster (``nodes:``, ``inter_node_gbps:``)."""
    if isinstance(name_or_path, ClusterSpec):
        return name_or_path
    p = Path(str(name_or_path))
    if p.suffix in (".yaml", ".yml") or p.exists():
        data = _read_yaml(p)
        if isinstance(data, dict) and "clusters" in data:
            return next(iter(_load_section(p, "clusters", ClusterSpec).values()))
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: expected a mapping with 'nodes', got {type(data).__name__}")
        try:
            return ClusterSpec(name=data.pop("name", p.stem), **data)
        except ValidationError as e:
            raise ConfigError(_fmt_validation(e, str(p), "cluster")) from None
        except ValueError as e:
            raise ConfigError(f"{p}: {e}") from None
    c = clusters()
    key = str(name_or_path).strip().lower()
    if key not in c:
        raise UnknownNameError("cluster", name_or_path, c)
    return c[key]


__all__ = [
    "ClusterSpec", "GPUSpec", "ModelSpec", "NodeGroup", "clusters", "configs_dir",
    "get_cluster", "get_gpu", "get_model", "gpus", "models",
]

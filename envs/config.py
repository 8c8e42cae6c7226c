"""``DeployEnvConfig``: every option of ``oserve_rl/Deploy-v0``, validated (unknown keys are rejected).

    gymnasium.make("oserve_rl/Deploy-v0", cluster="h100x16", traces=["azure-conv"], rate_scale=[1.5, 3.0])

Domain randomisation: ``clusters``/``models``/``traces`` are lists (one is
drawn per episode), ``rate_scale`` is a number or a ``[low, high]`` range,
``episode_s`` with ``start: random`` draws the window; all from the reset seed.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from oserve_rl.errors import ConfigError

ENV_VERSION = 2  # bump when the observation or action layout or meaning changes: old checkpoints are then refused
# 2: request types are fitted on the requests that fit the model's context (per-type features mean other types)

OBS_KEYS = ("rate_history", "forecast", "lengths", "deployment", "replicas", "switch", "time", "candidates",
            "action_mask")


class RewardConfig(BaseModel):
    """reward = -(p99_e2e / p99_ref_s) - slo_penalty * (1 - SLO attainment) - switch_penalty_per_s * downtime_s

    over the requests that finished in the interval (p99 of an empty interval: 0).
    ``kind="goodput"``: goodput_rps / goodput_ref_rps; ``kind="slo"``: the
    interval's SLO attainment; ``kind="cost"``: -$ spent on GPUs in the
    interval - slo_penalty * (1 - attainment).
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["p99", "goodput", "slo", "cost"] = "p99"
    p99_ref_s: float = Field(20.0, gt=0)
    slo_penalty: float = Field(1.0, ge=0)
    switch_penalty_per_s: float = Field(0.01, ge=0)
    goodput_ref_rps: float = Field(10.0, gt=0)


class DeployEnvConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clusters: list[str] = ["h100x16"]
    models: list[str] = ["llama-2-70b"]
    traces: list[str] = ["azure-conv"]
    rate_scale: float | tuple[float, float] = 1.0
    episode_s: float | None = Field(1800.0, gt=0)     # None: the whole trace
    start: float | Literal["random"] = "random"
    interval_s: float = Field(60.0, gt=0)
    num_types: int = Field(4, ge=1, le=16)
    num_candidates: int = Field(12, ge=2, le=64)      # K: actions are keep + K candidates
    max_replicas: int = Field(32, ge=1, le=256)
    history_min: int = Field(10, ge=1, le=120)        # minutes of per-type rate history in the observation
    obs_keys: list[str] = list(OBS_KEYS)
    reward: RewardConfig = RewardConfig()
    predictor: str = "lstm"
    decision_delay_s: float = Field(0.05, ge=0)       # charged per decision (agents and heuristics alike)
    slo_ttft_s: float | None = 2.0
    slo_tpot_s: float | None = 0.1
    mode: Literal["fast", "exact"] = "fast"
    initial: str = "oserve"                           # first deployment: oserve's pick, or a spec like 4xTP2
    invalid_action: Literal["error", "keep"] = "keep"  # a masked action keeps the deployment (info["invalid_action"] says so); "error" raises
    validation_windows: list[float] = []              # window starts (s) kept out of training ("start: random" avoids them)

    @field_validator("obs_keys")
    @classmethod
    def _obs_keys(cls, v: list[str]) -> list[str]:
        bad = [k for k in v if k not in OBS_KEYS]
        if bad:
            raise ValueError(f"unknown observation keys {bad}; valid: {list(OBS_KEYS)}")
        if "action_mask" not in v:
            v = [*v, "action_mask"]  # maskable trainers need it; it is always present
        return v

    @field_validator("episode_s", "interval_s", "decision_delay_s", "slo_ttft_s", "slo_tpot_s")
    @classmethod
    def _finite(cls, v: float | None, info: Any) -> float | None:
        # inf passes pydantic's bounds: an infinite decision delay silently disabled every switch, an infinite
        # episode overflowed the control loop. The SLOs must be reachable (a bound of 0 is never met).
        if v is not None and not math.isfinite(v):
            raise ValueError(f"must be a finite number (or null where allowed), got {v!r}")
        if info.field_name.startswith("slo_") and v is not None and not v > 0:
            raise ValueError(f"must be > 0 seconds (or null for no SLO); an SLO of 0 or less can never be met, got {v!r}")
        return v

    @field_validator("rate_scale")
    @classmethod
    def _rate(cls, v: Any) -> Any:
        lo, hi = (v, v) if isinstance(v, (int, float)) else v
        if not (0 < lo <= hi < math.inf):
            raise ValueError(f"rate_scale must be > 0 (or a [low, high] range with 0 < low <= high), got {v!r}")
        return v

    @field_validator("start")
    @classmethod
    def _start(cls, v: Any) -> Any:
        if v != "random" and not 0 <= v < math.inf:
            raise ValueError(f"start must be 'random' or seconds >= 0 into the trace, got {v!r}")
        return v

    @field_validator("validation_windows")
    @classmethod
    def _windows(cls, v: list[float]) -> list[float]:
        bad = [s for s in v if not 0 <= s < math.inf]
        if bad:
            raise ValueError(f"window starts must be seconds >= 0 into the trace, got {bad}")
        return v

    @field_validator("clusters", "models", "traces")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one entry")
        return v

    def space_signature(self) -> dict[str, Any]:
        """What fixes the observation and action spaces: a checkpoint must match it."""
        return {"env_version": ENV_VERSION, "num_types": self.num_types, "num_candidates": self.num_candidates,
                "max_replicas": self.max_replicas, "history_min": self.history_min, "obs_keys": list(self.obs_keys)}

    def space_hash(self) -> str:
        return hashlib.sha256(json.dumps(self.space_signature(), sort_keys=True).encode()).hexdigest()[:16]


def make_config(options: dict[str, Any] | DeployEnvConfig | None = None, **kw: Any) -> DeployEnvConfig:
    """Validated config from keyword options (singular ``cluster=``/``model=``/``trace=`` accepted too)."""
    if isinstance(options, DeployEnvConfig) and not kw:
        return options
    # Keywords override the options they are given with; within one of them, cluster= and clusters= at once
    # is ambiguous (which one wins would be a silent choice).
    data = options.model_dump() if isinstance(options, DeployEnvConfig) else _plural(dict(options or {}))
    data.update(_plural(kw))
    try:
        return DeployEnvConfig(**data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                import difflib

                # The valid keys where the unknown one sits: reward.* are RewardConfig's.
                nested = len(err["loc"]) > 1 and err["loc"][0] == "reward"
                fields = sorted(RewardConfig.model_fields if nested else DeployEnvConfig.model_fields)
                valid = fields if nested else fields + ["cluster", "model", "trace"]
                hint = difflib.get_close_matches(str(err["loc"][-1]), valid, 1)
                lines.append(f"unknown env option {loc!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                             + f"; valid {'reward ' if nested else ''}options: {', '.join(fields)}")
            else:
                lines.append(f"env option {loc}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("; ".join(lines)) from None


def _plural(options: dict[str, Any]) -> dict[str, Any]:
    """``cluster=X`` as ``clusters=[X]`` (likewise model, trace); both spellings at once is an error."""
    for single, plural in (("cluster", "clusters"), ("model", "models"), ("trace", "traces")):
        if single in options:
            if plural in options:
                raise ConfigError(f"env options {single}={options[single]!r} and {plural}={options[plural]!r} both "
                                  f"given; use one ({single}=X is {plural}=[X])")
            options[plural] = [options.pop(single)]
    return options

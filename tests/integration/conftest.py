"""Fixtures for the live-cluster integration tests: the vLLM venv, a tiny model, free router ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
VLLM_ROUTER = REPO / ".venv-vllm" / "bin" / "vllm-router"
LIVE_CONFIG = REPO / "configs" / "live" / "cpu-tiny.yaml"


def vllm_missing_reason() -> str | None:
    if not VLLM_PYTHON.exists() or not VLLM_ROUTER.exists():
        return f"{VLLM_PYTHON.parent} has no vLLM / vllm-router: run scripts/setup_live.sh"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny random Llama per test session (built under the vLLM venv, ~10 s)."""
    reason = vllm_missing_reason()
    if reason:
        pytest.skip(reason)
    from oserve_rl.live.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), python=VLLM_PYTHON)


@pytest.fixture(scope="session")
def live_config(tiny_model_dir: Path):
    """configs/live/cpu-tiny.yaml with the session's model and router ports nobody uses."""
    from oserve_rl.live.backend import load_live_config

    return load_live_config(
        LIVE_CONFIG, base_dir=REPO, model=str(tiny_model_dir),
        router_port=free_port(), router_prometheus_port=free_port(),
    )

"""train.py --backend rllib against a real Ray cluster started with `ray start --head` (no fakes).

Run with: .venv/bin/python -m pytest -q -m integration tests/integration/test_rllib_ray.py
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

# find_spec, not importorskip: collecting this file in the default (non-integration) run must stay cheap.
if importlib.util.find_spec("ray") is None or importlib.util.find_spec("tensorboard") is None:
    pytest.skip("needs the rllib extra (ray[rllib], tensorboard)", allow_module_level=True)

REPO = Path(__file__).resolve().parents[2]
RAY = Path(sys.executable).with_name("ray")

TINY = """\
env:
  clusters: [h100x8]
  traces: [azure-conv]
  rate_scale: 1.0
  episode_s: 600
  interval_s: 60
  num_candidates: 4
  max_replicas: 8
  predictor: ewma
  validation_windows: [2400]
backend: rllib
algo: ppo
total_steps: 128
seed: 0
num_env_runners: 1
hyperparams:
  train_batch_size_per_learner: 64
  minibatch_size: 32
  num_epochs: 2
  fcnet_hiddens: [32, 32]
eval:
  every_steps: 64
  windows: [{start_s: 2400, rate_scale: 1.0, data_seed: 0}]
  heuristics: [vllm_static, oserve]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"`ray start` exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"Ray head did not open port {port} in {timeout_s} s")


@pytest.fixture
def ray_head():
    """A Ray head on free ports; stopped by signalling only its own process group (not `ray stop`,
    which would also kill other people's Ray processes on a shared machine)."""
    if not RAY.exists():
        pytest.skip(f"no ray executable at {RAY}")
    port = _free_port()
    # Short root: Ray's Unix sockets live in the temp dir and their paths must stay under 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    cmd = [str(RAY), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
           "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp_dir,
           "--ray-client-server-port", str(_free_port()), "--min-worker-port", "0", "--max-worker-port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_port(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_group(proc)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group `ray start` leads (gcs_server, raylet, workers)."""
    for sig, grace_s in ((signal.SIGTERM, 8.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + grace_s
        while time.monotonic() < end:
            proc.poll()  # reap the leader so an empty group reads as gone
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            continue
        break
    proc.wait(timeout=10)


def _train(args: list[str], timeout_s: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.integration
def test_train_on_ray_cluster_logs_evals_and_saves_a_loadable_checkpoint(tmp_path, ray_head):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from oserve_rl.envs.checkpoints import CheckpointPolicy
    from oserve_rl.envs.deploy import DeployEnv
    from oserve_rl.train.rllib import load_rllib_actor

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    res = _train(["--config", str(cfg), "--backend", "rllib", "--ray-address", ray_head, "--total-steps", "128",
                  "--logdir", str(tmp_path), "--run-name", "run"])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "checkpoint" / "rllib_checkpoint.json").is_file()
    assert (run / "train_summary.json").is_file() and (run / "config.yaml").is_file()

    events = sorted((run / "tb").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event files under the run directory"
    acc = EventAccumulator(str(events[-1].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"eval/p99_e2e_s/agent", "eval/p99_e2e_s/vllm_static", "eval/p99_e2e_s/oserve",
            "eval/slo_attainment/agent", "rollout/ep_rew_mean", "time/steps_per_s"} <= tags
    steps = [e.step for e in acc.Scalars("eval/p99_e2e_s/agent")]
    assert steps[0] == 0 and steps[-1] >= 128

    act = load_rllib_actor(run / "checkpoint")
    env = DeployEnv(yaml.safe_load(TINY)["env"])
    obs, _ = env.reset(seed=5)
    for _ in range(10):
        a = act(obs, env)
        assert 0 <= a < env.action_space.n and env.action_masks()[a]
        obs, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            break
    # evaluate.py's path: the checkpoint as a policy (signature check against env_space.json)
    assert CheckpointPolicy("rllib", run / "checkpoint").act(obs, env) in np.flatnonzero(env.action_masks())


@pytest.mark.integration
def test_unreachable_ray_address_is_one_error_line(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    port = _free_port()
    res = _train(["--config", str(cfg), "--backend", "rllib", "--ray-address", f"127.0.0.1:{port}",
                  "--logdir", str(tmp_path)], timeout_s=120)
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "ray start --head" in errors[0]
    assert "Traceback" not in res.stderr

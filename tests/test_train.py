"""train.py with the SB3 backend: a real (tiny) run, its TensorBoard events read back, its checkpoint reused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "env": {"clusters": ["h100x8"], "traces": ["azure-conv"], "episode_s": 300, "num_candidates": 4,
            "max_replicas": 8, "predictor": "ewma", "validation_windows": [2400]},
    "algo": "maskable_ppo", "total_steps": 40, "seed": 0, "init_action_bias": {1: 1.0},
    "hyperparams": {"n_steps": 20, "batch_size": 10, "n_epochs": 1},
    "eval": {"every_steps": 20, "windows": [{"start_s": 2400, "rate_scale": 1.0}],
             "heuristics": ["vllm_static", "oserve"]},
}


def _train(tmp_path: Path, cfg: dict, *extra: str) -> subprocess.CompletedProcess:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", str(path), "--logdir",
                           str(tmp_path / "runs"), "--run-name", "tiny", *extra],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    r = _train(tmp, TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "runs" / "tiny", r


def test_run_directory_has_config_checkpoint_and_summary(tiny_run):
    run, r = tiny_run
    for f in ("config.yaml", "env_space.json", "model.zip", "best_model.zip", "train_summary.json"):
        assert (run / f).is_file(), f
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["algo"] == "maskable_ppo" and saved["env"]["clusters"] == ["h100x8"]
    assert "validation" in r.stdout and "oserve" in r.stdout
    # A line per evaluation while training (eval.every_steps 20), so a run logged to a file shows progress.
    assert "step 20/40" in r.stdout and "validation p99 E2E agent" in r.stdout


def test_tensorboard_events_hold_agent_and_heuristics_under_shared_tags(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tiny_run
    files = list((run / "tb").rglob("events.out.tfevents.*"))
    assert files
    tags: set[str] = set()
    for f in files:
        ea = EventAccumulator(str(f))
        ea.Reload()
        tags |= set(ea.Tags()["scalars"])
    for policy in ("agent", "oserve", "vllm_static"):
        for metric in ("p99_e2e_s", "slo_attainment", "switches", "return"):
            assert f"eval/{metric}/{policy}" in tags
    assert "time/steps_per_s" in tags
    assert any(t.startswith("train/") for t in tags)


def test_the_checkpoint_evaluates_on_evaluate_py_episodes(tiny_run, tmp_path):
    run, _ = tiny_run
    r = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--cluster", "h100x8", "--model", "llama-2-70b",
                        "--trace", "azure-conv", "--duration", "180", "--predictor", "ewma", "--no-plots",
                        "--policies", f"oserve,maskable_ppo:{run / 'model.zip'}", "--out", str(tmp_path / "e")],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "maskable_ppo:" in (tmp_path / "e" / "table.md").read_text()


def test_a_checkpoint_from_another_space_is_one_clear_error(tiny_run, tmp_path):
    run, _ = tiny_run
    other = dict(yaml.safe_load((run / "config.yaml").read_text()))
    other["env"] = {**other["env"], "num_candidates": 6}
    from oserve_rl.envs.checkpoints import check_compatible
    from oserve_rl.envs.config import make_config
    from oserve_rl.errors import CheckpointError

    with pytest.raises(CheckpointError, match="num_candidates"):
        check_compatible(run / "model.zip", make_config(other["env"]))


def test_bad_config_key_is_one_clear_error(tmp_path):
    r = _train(tmp_path, {**TINY, "total_step": 10})
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "total_steps" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs" / "train").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_train_config_validates(path):
    from oserve_rl.envs.config import make_config
    from oserve_rl.train.config import load_train_config

    cfg = load_train_config(path)
    assert cfg.total_steps > 0
    make_config(cfg.env)  # the env options are valid Deploy-v0 options too


@pytest.mark.slow
def test_subproc_vec_env_trains_exactly_as_in_process(tmp_path):
    """vec_env: subproc only moves the env copies into worker processes: the same seed gives the same policy."""
    import zipfile

    weights = {}
    for kind in ("dummy", "subproc"):
        (tmp_path / kind).mkdir()
        r = _train(tmp_path / kind, {**TINY, "n_envs": 2, "hyperparams": {**TINY["hyperparams"], "n_steps": 10}},
                   "--vec-env", kind)
        assert r.returncode == 0, r.stderr[-3000:]
        with zipfile.ZipFile(tmp_path / kind / "runs" / "tiny" / "model.zip") as z:
            weights[kind] = z.read("policy.pth")
    assert weights["dummy"] == weights["subproc"]


def test_vec_env_is_an_sb3_option(tmp_path):
    r = _train(tmp_path, {**TINY, "backend": "rllib", "algo": "ppo", "init_action_bias": {}, "vec_env": "subproc"})
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "num_env_runners" in r.stderr


def test_init_from_continues_a_checkpoint_and_refuses_one_that_does_not_fit(tiny_run, tmp_path):
    """--init-from (RL Zoo's --trained-agent): the saved model trains on, its step count carries over, TensorBoard
    continues; a checkpoint of other spaces or of another algorithm is one clear error."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _ = tiny_run
    r = _train(tmp_path, {**TINY, "total_steps": 20}, "--init-from", str(run / "model.zip"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "trained 20 steps more (60 in all" in r.stdout and "step 60/60 (" in r.stdout
    cont = tmp_path / "runs" / "tiny"
    summary = json.loads((cont / "train_summary.json").read_text())
    assert summary["steps"] == 60 and summary["steps_this_run"] == 20
    acc = EventAccumulator(str(next((cont / "tb").iterdir())))
    acc.Reload()
    assert max(e.step for e in acc.Scalars("eval/p99_e2e_s/agent")) == 60
    other = {**TINY, "env": {**TINY["env"], "num_candidates": 5}}
    r = _train(tmp_path, other, "--init-from", str(run / "model.zip"), "--run-name", "other")
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "num_candidates" in r.stderr
    r = _train(tmp_path, {**TINY, "algo": "ppo"}, "--init-from", str(run / "model.zip"), "--run-name", "ppo")
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "algorithm that saved it" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_ctrl_c_keeps_the_latest_model_to_continue_from(tmp_path):
    import signal

    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({**TINY, "total_steps": 100_000}))
    # SIGINT back to its default in the child: a test run started in the background by a non-interactive shell
    # inherits it ignored, and Python then installs no KeyboardInterrupt handler (Ctrl-C would do nothing).
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), "--config", str(path), "--logdir",
                             str(tmp_path / "runs"), "--run-name", "long"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    for line in proc.stdout:  # the first evaluation after step 0 has saved a model
        if line.startswith("step 20/"):
            break
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    saved = tmp_path / "runs" / "long" / "model.zip"
    assert saved.is_file() and f"continue it with --init-from {saved}" in err and "Traceback" not in err

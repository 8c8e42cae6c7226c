"""Policy export: SB3 PPO / MaskablePPO and RLlib checkpoints -> ONNX + policy.json, heuristics -> policy.json.

The round trips compare onnxruntime with the project's own checkpoint loader
(``oserve_rl.envs.checkpoints.load_actor``, what evaluate.py runs) on 1,000
observations: real ones from Deploy-v0 rollouts, jittered real ones, and
samples of the observation space with random valid masks.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("sb3_contrib")

from oserve_rl.envs.checkpoints import load_actor  # noqa: E402
from oserve_rl.envs.config import ENV_VERSION, make_config  # noqa: E402
from oserve_rl.envs.deploy import DeployEnv  # noqa: E402
from oserve_rl.errors import CheckpointError, ConfigError, UnknownNameError  # noqa: E402
from oserve_rl.export import cli  # noqa: E402
from oserve_rl.export.onnx_export import export_checkpoint, export_heuristic, resolve_checkpoint  # noqa: E402
from oserve_rl.export.runtime import installed_env_version, load_exported  # noqa: E402
from oserve_rl.train.config import TrainConfig  # noqa: E402

SMALL = dict(cluster="h100x8", trace="azure-conv", episode_s=300, num_candidates=4, max_replicas=8, predictor="ewma")
N_OBS = 1000


class _MaskOnly:
    """What load_actor's ``act(obs, env)`` reads from the env: the mask of this observation."""

    def __init__(self, obs):
        self.unwrapped, self._mask = self, np.asarray(obs["action_mask"]) > 0.5

    def action_masks(self):
        return self._mask


def _write_run(run: Path, **train) -> TrainConfig:
    """config.yaml + env_space.json exactly as train.py writes them."""
    run.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(env=dict(SMALL), **train)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (run / "env_space.json").write_text(json.dumps(cfg.env_config().space_signature(), indent=2) + "\n")
    return cfg


def _scramble(module, seed: int) -> None:
    """Seeded non-trivial weights, so the policy picks many different actions (a fresh head is near-uniform)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)


@pytest.fixture(scope="module")
def env():
    return DeployEnv(dict(SMALL))


@pytest.fixture(scope="module")
def observations(env):
    """N_OBS single observations: rollouts, rollouts + noise, and space samples with random valid masks."""
    rng = np.random.default_rng(0)
    real = []
    for seed in range(8):
        obs, _ = env.reset(seed=seed)
        real.append(obs)
        done = False
        while not done:
            action = int(rng.choice(np.flatnonzero(env.action_masks())))
            obs, _, done, _, _ = env.step(action)
            real.append(obs)
    jittered = []
    while len(real) + len(jittered) < N_OBS // 2:
        base = real[int(rng.integers(len(real)))]
        o = {k: (v + rng.normal(0.0, 0.5, v.shape)).astype(np.float32) for k, v in base.items() if k != "action_mask"}
        o["action_mask"] = base["action_mask"].copy()
        jittered.append(o)
    space = env.observation_space
    space.seed(0)
    sampled = []
    while len(real) + len(jittered) + len(sampled) < N_OBS:
        o = space.sample()
        mask = (rng.random(env.num_actions) < 0.5).astype(np.float32)
        mask[:2] = 1.0  # keep and oserve are always allowed
        o["action_mask"] = mask
        sampled.append(o)
    return real + jittered + sampled


@pytest.fixture(scope="module")
def runs(tmp_path_factory, env):
    """Run directories as train.py leaves them: SB3 PPO and MaskablePPO model.zip, an RLlib module."""
    from oserve_rl.train.sb3 import algo_class

    root = tmp_path_factory.mktemp("runs")
    out = {}
    for i, kind in enumerate(("ppo", "maskable_ppo")):
        run = root / kind
        _write_run(run, algo=kind, total_steps=64, seed=i)
        model = algo_class(kind)("MultiInputPolicy", env, n_steps=16, batch_size=16, seed=i, device="cpu",
                                 policy_kwargs={"net_arch": [32, 32]})
        _scramble(model.policy, seed=i)
        model.save(run / "model.zip")
        out[kind] = run / "model.zip"
    pytest.importorskip("ray.rllib")
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec
    from ray.rllib.examples.rl_modules.classes.action_masking_rlm import ActionMaskingTorchRLModule

    from oserve_rl.train.rllib import MaskedFlatObs

    run = root / "rllib"
    _write_run(run, backend="rllib", algo="ppo", total_steps=64, seed=2)
    module = RLModuleSpec(module_class=ActionMaskingTorchRLModule, observation_space=MaskedFlatObs(env).observation_space,
                          action_space=env.action_space, model_config={"fcnet_hiddens": [32, 32]}).build()
    _scramble(module, seed=2)
    module.save_to_path(str(run / "best_module"))
    out["rllib"] = run / "best_module"
    return out


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory):
    """Each kind exported once: PPO and RLlib through the API, MaskablePPO through the CLI with --bench."""
    root = tmp_path_factory.mktemp("exports")
    out = {}
    for kind in ("ppo", "rllib"):
        res = export_checkpoint(runs[kind], root / kind)
        assert res.agreement == (1000, 1000)
        out[kind] = root / kind
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.run([str(runs["maskable_ppo"].parent), "--out", str(root / "maskable_ppo"), "--bench"])
    assert rc == 0
    out["maskable_ppo"] = root / "maskable_ppo"
    out["cli_output"] = buf.getvalue()
    return out


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", ["ppo", "maskable_ppo", "rllib"])
def test_onnx_chooses_the_checkpoints_actions(kind, runs, exported, observations):
    reference = load_actor(kind, runs[kind])
    policy = load_exported(exported[kind])
    want = []
    for obs in observations:
        a = reference(obs, _MaskOnly(obs))
        # Plain PPO ignores the mask; Deploy-v0 (invalid_action: keep) executes a masked choice as keep.
        want.append(a if kind != "ppo" or obs["action_mask"][a] > 0.5 else 0)
    got = [policy.act(obs) for obs in observations]
    assert sum(g == w for g, w in zip(got, want)) == N_OBS
    batch = {k: np.stack([o[k] for o in observations]) for k in observations[0]}
    np.testing.assert_array_equal(policy.act_batch(batch), want)
    masks = batch["action_mask"]
    assert all(masks[i, a] > 0.5 for i, a in enumerate(got))  # every exported choice is allowed
    assert len(set(got)) >= 3  # a policy that always keeps would prove nothing
    if kind == "ppo":
        raw = [reference(o, _MaskOnly(o)) for o in observations]
        assert any(o["action_mask"][a] < 0.5 for o, a in zip(observations, raw))  # the keep rule was exercised


@pytest.mark.parametrize("kind", ["ppo", "maskable_ppo", "rllib"])
def test_graph_file_and_policy_json(kind, runs, exported):
    import onnx

    out = exported[kind]
    assert sorted(p.name for p in out.iterdir()) == ["policy.json", "policy.onnx"]  # one file, no external data
    model = onnx.load(str(out / "policy.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {17}
    cfg = make_config(SMALL)
    keys = sorted(cfg.obs_keys)
    assert [i.name for i in model.graph.input] == keys
    assert [o.name for o in model.graph.output] == ["action", "logits"]

    spec = json.loads((out / "policy.json").read_text())
    assert spec["format_version"] == 1 and spec["kind"] == "onnx" and spec["env_version"] == ENV_VERSION
    assert [e["key"] for e in spec["observation"]["keys"]] == keys
    shapes = {e["key"]: e["shape"] for e in spec["observation"]["keys"]}
    assert shapes["candidates"] == [6 * 8] and shapes["replicas"] == [8 * 8] and shapes["action_mask"] == [6]
    assert "already scales" in spec["observation"]["normalisation"]
    assert spec["env"]["space_hash"] == cfg.space_hash()
    assert spec["env"]["space_signature"] == cfg.space_signature()
    assert spec["env"]["config"] == cfg.model_dump(mode="json")
    table = spec["actions"]["table"]
    assert [r["name"] for r in table] == ["keep", "oserve", "candidate_0", "candidate_1", "candidate_2", "candidate_3"]
    assert table[1]["oserve_params"]["hysteresis"] == 0.05
    assert spec["actions"]["candidates"]["determined_by"]["num_candidates"] == 4
    prov = spec["provenance"]
    assert prov["algo"] == ("ppo" if kind == "rllib" else kind)
    assert prov["backend"] == ("rllib" if kind == "rllib" else "sb3")
    assert prov["total_steps"] == 64 and prov["seed"] == {"ppo": 0, "maskable_ppo": 1, "rllib": 2}[kind]
    assert Path(prov["run_dir"]) == runs[kind].parent.resolve()
    assert prov["created_at"] and "git_commit" in prov
    assert spec["verification"] == {**spec["verification"], "observations": 1000, "agreeing": 1000}


def test_cli_prints_agreement_and_timing(exported):
    text = exported["cli_output"]
    assert "round trip: 1000/1000" in text
    assert "ms per decision" in text and "original framework" in text


# ---------------------------------------------------------------- the serving side
def test_runtime_imports_only_numpy_and_onnxruntime(exported):
    code = textwrap.dedent(f"""
        import json, pickle, sys
        def refuse(*a, **k):
            raise AssertionError("the runtime unpickled something")
        pickle.load = pickle.loads = refuse
        before = set(sys.modules)
        import numpy as np
        from oserve_rl.export.runtime import load_exported
        p = load_exported({str(exported['maskable_ppo'])!r})
        obs = {{k: np.zeros(s, np.float32) for k, s in p.obs_shapes.items()}}
        obs["action_mask"][:] = 1.0
        a = p.act(obs)
        new = {{m.split(".")[0] for m in set(sys.modules) - before}}
        print(json.dumps({{"action": a, "third_party": sorted(n for n in new if n not in sys.stdlib_module_names)}}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert 0 <= out["action"] < 6
    assert set(out["third_party"]) <= {"numpy", "onnxruntime", "oserve_rl"}, out["third_party"]


def test_bad_observations_name_the_key_and_shape(exported, observations):
    policy = load_exported(exported["maskable_ppo"])
    good = observations[0]
    with pytest.raises(CheckpointError, match=r"missing 'replicas'.*shape \(64,\)"):
        policy.act({k: v for k, v in good.items() if k != "replicas"})
    with pytest.raises(CheckpointError, match=r"'candidates' has shape \(47,\), expected \(48,\)"):
        policy.act({**good, "candidates": good["candidates"][:-1]})
    with pytest.raises(CheckpointError, match=r"'forecast' has shape \(1, 4\), expected \(4,\)"):
        policy.act({**good, "forecast": good["forecast"][None]})
    with pytest.raises(CheckpointError, match="'time' has non-finite values"):
        policy.act({**good, "time": np.array([np.nan, 0, 1], np.float32)})
    with pytest.raises(CheckpointError, match="must be a dict"):
        policy.act([good[k] for k in policy.obs_keys])
    with pytest.raises(CheckpointError, match=r"'switch' has shape \(3, 2\), expected \(2, 2\)"):
        policy.act_batch({k: np.stack([v, v]) if k != "switch" else np.zeros((3, 2)) for k, v in good.items()})
    assert policy.act({**good, "extra": np.zeros(3)}) == policy.act(good)  # keys the policy does not read


def test_foreign_or_tampered_exports_are_refused(exported, tmp_path):
    import shutil

    src = exported["maskable_ppo"]
    assert installed_env_version() == ENV_VERSION
    other = ENV_VERSION + 1
    with pytest.raises(CheckpointError, match=rf"env_version {ENV_VERSION}, the observations come from env_version {other}"):
        load_exported(src, env_version=other)
    d = tmp_path / "old"
    shutil.copytree(src, d)
    spec = json.loads((d / "policy.json").read_text())
    (d / "policy.json").write_text(json.dumps({**spec, "env_version": ENV_VERSION + 1}))
    with pytest.raises(CheckpointError, match=rf"exported for Deploy-v0 env_version {ENV_VERSION + 1}"):
        load_exported(d)
    (d / "policy.json").write_text(json.dumps({**spec, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_exported(d)
    (d / "policy.json").write_text(json.dumps(spec))
    (d / "policy.onnx").write_bytes((d / "policy.onnx").read_bytes() + b"\0")
    with pytest.raises(CheckpointError, match="is not the graph policy.json describes"):
        load_exported(d)
    with pytest.raises(CheckpointError, match="no exported policy"):
        load_exported(tmp_path / "missing")


# ---------------------------------------------------------------- checkpoints the exporter refuses
def test_kind_detection_and_mismatches(runs, tmp_path):
    assert resolve_checkpoint(runs["ppo"])[0] == "ppo"
    assert resolve_checkpoint(runs["maskable_ppo"].parent) == ("maskable_ppo", runs["maskable_ppo"])
    assert resolve_checkpoint(runs["rllib"].parent) == ("rllib", runs["rllib"])
    with pytest.raises(CheckpointError, match=r"holds a maskable_ppo policy .* not ppo: pass --kind maskable_ppo"):
        resolve_checkpoint(runs["maskable_ppo"], "ppo")
    with pytest.raises(CheckpointError, match="RLlib checkpoint, not maskable_ppo"):
        resolve_checkpoint(runs["rllib"], "maskable_ppo")
    with pytest.raises(UnknownNameError, match="unknown export kind 'dqn'"):
        resolve_checkpoint(runs["ppo"], "dqn")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nope.zip")
    with pytest.raises(CheckpointError, match="not an exportable checkpoint"):
        resolve_checkpoint(tmp_path)
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError, match="not a Stable-Baselines3 model zip"):
        resolve_checkpoint(tmp_path / "junk.zip")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "model.zip").write_bytes(runs["ppo"].read_bytes())
    with pytest.raises(CheckpointError, match="no config.yaml beside checkpoint .*lone"):
        export_checkpoint(lone / "model.zip", tmp_path / "out")


# ---------------------------------------------------------------- heuristics
def test_heuristic_export_names_the_policy_and_all_its_parameters(tmp_path, capsys, runs):
    out = tmp_path / "oserve"
    rc = cli.run(["oserve", "--out", str(out), "--param", "hysteresis=0.1", "--param", "latency_aware=false",
                  "--env-config", str(runs["ppo"].parent / "config.yaml")])
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["policy.json"]
    spec = json.loads((out / "policy.json").read_text())
    assert spec["kind"] == "heuristic" and spec["env_version"] == ENV_VERSION
    import inspect

    from oserve_rl.agents.oserve import OServe

    defaults = {k: p.default for k, p in inspect.signature(OServe.__init__).parameters.items() if k != "self"}
    assert spec["heuristic"]["params"] == {**defaults, "hysteresis": 0.1, "latency_aware": False}
    assert spec["env"]["space_hash"] == make_config(SMALL).space_hash()
    policy = load_exported(out)
    assert policy.kind == "heuristic" and policy.name == "oserve" and policy.params["hysteresis"] == 0.1
    with pytest.raises(CheckpointError, match="heuristic 'oserve'.*make_heuristic"):
        policy.act({})
    built = policy.make_heuristic()
    assert built.describe() == {"name": "oserve", **spec["heuristic"]["params"]}


def test_heuristic_export_errors(tmp_path, capsys):
    assert cli.run(["oserve", "--out", str(tmp_path / "a"), "--param", "hysteresis=-1"]) == 2
    assert "hysteresis must be >= 0" in capsys.readouterr().err
    assert cli.run(["oserve", "--out", str(tmp_path / "a"), "--param", "hysteresiss=0.1"]) == 2
    assert "bad parameters ['hysteresiss']" in capsys.readouterr().err
    assert cli.run(["oserve", "--out", str(tmp_path / "a"), "--param", "novalue"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert cli.run(["osrve", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "neither an existing checkpoint path nor a heuristic" in err and "oserve" in err
    with pytest.raises(ConfigError, match="needs the episode's future"):
        export_heuristic("oserve_oracle", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------- real training runs
def _env_rollout_observations(env_opts, seeds=(0, 1)):
    env = DeployEnv(dict(env_opts))
    rng = np.random.default_rng(0)
    obs_list = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        obs_list.append(obs)
        done = False
        while not done:
            obs, _, done, _, _ = env.step(int(rng.choice(np.flatnonzero(env.action_masks()))))
            obs_list.append(obs)
    return obs_list


def _tiny_train_config(tmp_path: Path, **kw) -> tuple[TrainConfig, Path]:
    run = tmp_path / "run"
    cfg = _write_run(run, total_steps=32, seed=0, eval={"every_steps": 10_000, "heuristics": [],
                                                          "windows": [{"start_s": 0.0, "rate_scale": 1.0}]}, **kw)
    return cfg, run


def test_trained_maskable_ppo_round_trip(tmp_path):
    from oserve_rl.train.sb3 import train_sb3

    cfg, run = _tiny_train_config(tmp_path, algo="maskable_ppo",
                                  hyperparams={"n_steps": 16, "batch_size": 16, "n_epochs": 1})
    train_sb3(cfg, run)
    res = export_checkpoint(run, tmp_path / "out")
    assert res.agreement == (1000, 1000) and res.spec["provenance"]["trained_steps"] >= 32
    reference, policy = load_actor("maskable_ppo", run / "model.zip"), load_exported(tmp_path / "out")
    for obs in _env_rollout_observations(cfg.env):
        assert policy.act(obs) == reference(obs, _MaskOnly(obs))


@pytest.mark.integration
def test_trained_rllib_round_trip(tmp_path):
    pytest.importorskip("ray.rllib")
    from oserve_rl.train.rllib import train_rllib

    cfg, run = _tiny_train_config(tmp_path, backend="rllib", algo="ppo",
                                  hyperparams={"train_batch_size_per_learner": 32, "minibatch_size": 16,
                                               "num_epochs": 1, "fcnet_hiddens": [16]})
    train_rllib(cfg, run)
    res = export_checkpoint(run / "checkpoint", tmp_path / "out")
    assert res.agreement == (1000, 1000) and res.spec["provenance"]["trained_steps"] >= 32
    reference, policy = load_actor("rllib", run / "checkpoint"), load_exported(tmp_path / "out")
    for obs in _env_rollout_observations(cfg.env):
        assert policy.act(obs) == reference(obs, None)

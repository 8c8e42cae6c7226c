"""train.py and load_train_config on bad input: one error naming the file, field or flag, raised before the
run directory is created or written. No training runs here (each test takes seconds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from oserve_rl.errors import ConfigError
from scriptload import load_script
from oserve_rl.train.config import load_train_config

ROOT = Path(__file__).resolve().parents[1]

TINY: dict[str, Any] = {
    "env": {"clusters": ["h100x8"], "traces": ["azure-conv"], "episode_s": 300, "num_candidates": 4,
            "max_replicas": 8, "predictor": "ewma", "validation_windows": [2400]},
    "algo": "maskable_ppo", "total_steps": 10, "seed": 0,
    "hyperparams": {"n_steps": 10, "batch_size": 10, "n_epochs": 1},
    "eval": {"every_steps": 10, "windows": [{"start_s": 2400, "rate_scale": 1.0}], "heuristics": ["vllm_static"]},
}


def _with(path: str, value: Any) -> dict[str, Any]:
    """TINY with the dotted ``path`` (list indices as numbers) set to ``value``."""
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    node = cfg
    for p in parents:
        node = node[p]
    node[last] = value
    return cfg


def _write(tmp_path: Path, cfg: dict[str, Any], name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def train_cli():
    return load_script(ROOT / "train.py", "train_cli_under_test")


def _main(train_cli, capsys, *argv: str) -> tuple[int, str]:
    rc = train_cli.main(list(argv))
    return rc, capsys.readouterr().err


# ----------------------------------------------------------------- 1. nothing written before validation
def _existing_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "existing"
    run.mkdir(parents=True)
    for name, text in (("config.yaml", "the good run's config\n"), ("env_space.json", "{}\n"),
                       ("model.zip", "weights")):
        (run / name).write_text(text)
    return run


def _contents(run: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(run.iterdir())}


def test_a_bad_config_leaves_an_existing_run_directory_untouched(train_cli, capsys, tmp_path):
    run = _existing_run(tmp_path)
    before = _contents(run)
    bad = _write(tmp_path, _with("env.traces", ["azure-convv"]))
    rc, err = _main(train_cli, capsys, "--config", str(bad), "--logdir", str(tmp_path / "runs"),
                    "--run-name", "existing", "--overwrite")
    assert rc == 2 and err.count("error:") == 1 and "azure-convv" in err
    assert _contents(run) == before


def test_a_bad_config_creates_no_run_directory(train_cli, capsys, tmp_path):
    bad = _write(tmp_path, _with("hyperparams.n_epoch", 5))
    rc, err = _main(train_cli, capsys, "--config", str(bad), "--logdir", str(tmp_path / "runs"))
    assert rc == 2 and "n_epochs" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_a_run_directory_with_a_trained_model_is_refused_without_overwrite(train_cli, capsys, tmp_path):
    run = _existing_run(tmp_path)
    before = _contents(run)
    good = _write(tmp_path, TINY)
    rc, err = _main(train_cli, capsys, "--config", str(good), "--logdir", str(tmp_path / "runs"),
                    "--run-name", "existing")
    assert rc == 2 and err.count("error:") == 1
    assert "already holds a trained model (model.zip)" in err and "--overwrite" in err and "--run-name" in err
    assert _contents(run) == before
    train_cli.check_run_dir(run, overwrite=True)  # asked for: allowed
    train_cli.check_run_dir(tmp_path / "runs" / "new", overwrite=False)
    (tmp_path / "runs" / "half").mkdir()  # a run that died before saving a model: nothing to lose
    (tmp_path / "runs" / "half" / "config.yaml").write_text("x")
    train_cli.check_run_dir(tmp_path / "runs" / "half", overwrite=False)


def test_a_bad_ray_address_is_refused_before_the_run_directory(train_cli, capsys, tmp_path):
    rc, err = _main(train_cli, capsys, "--config", str(ROOT / "configs/train/quickstart_rllib.yaml"),
                    "--ray-address", "nohost", "--logdir", str(tmp_path / "runs"))
    assert rc == 2 and "--ray-address nohost: expected 'auto' or HOST:PORT" in err
    assert not (tmp_path / "runs").exists()


# ----------------------------------------------------------------- 2. value errors name the file and the field
@pytest.mark.parametrize("path,value,expected", [
    ("env.traces", ["azure-convv"], r"env\.traces: unknown trace 'azure-convv'; did you mean 'azure-conv'"),
    ("env.clusters", ["h100x17"], r"env\.clusters: unknown cluster 'h100x17'; did you mean 'h100x16'"),
    ("env.models", ["llama-2-7000b"], r"env\.models: unknown model 'llama-2-7000b'"),
    ("env.predictor", "ewmaa", r"env\.predictor: .*'ewmaa'"),
    ("env.initial", "3xTP8", r"env\.initial: "),
    ("eval.heuristics", ["vllm_static", "osrve"], r"eval\.heuristics: unknown env policy 'osrve'; did you mean 'oserve'"),
    ("eval.windows.0.start_s", 99999, (r"eval\.windows\[0\]\.start_s: 99999 s is past the end of trace "
                                       r"'azure-conv'; valid: 0 <= start_s < 3501")),
    ("eval.windows.0.trace", "azure-cod", r"eval\.windows\[0\]\.trace: unknown trace 'azure-cod'"),
    ("eval.windows.0.cluster", "h100x9", r"eval\.windows\[0\]\.cluster: unknown cluster 'h100x9'"),
    ("eval.windows", [], r"eval\.windows: needs at least 1 entry"),
    ("seed", -1, r"seed: must be >= 0 \(got -1\)"),
])
def test_value_errors_name_the_file_and_the_field(tmp_path, path, value, expected):
    cfg = _write(tmp_path, _with(path, value))
    with pytest.raises(ConfigError, match=rf"^{cfg!s}: {expected}"):
        load_train_config(cfg)


# ----------------------------------------------------------------- 3. nested unknown keys
def test_a_nested_unknown_key_lists_the_keys_valid_where_it_sits(tmp_path):
    cfg = _write(tmp_path, _with("eval.windows", [{"startt_s": 2400}]))
    with pytest.raises(ConfigError) as e:
        load_train_config(cfg)
    msg = str(e.value)
    assert "unknown key 'eval.windows[0].startt_s' (did you mean 'start_s'?)" in msg
    assert "valid here: start_s, rate_scale, data_seed, trace, cluster, model" in msg


# ----------------------------------------------------------------- 4. sb3 hyperparameters
@pytest.mark.parametrize("hp,expected", [
    ({"n_epoch": 5}, r"hyperparams: unknown key\(s\) 'n_epoch' \(did you mean 'n_epochs'\?\) for maskable_ppo"),
    ({"lr": 0.001}, r"hyperparams: unknown key\(s\) 'lr' \(did you mean 'learning_rate'\?\)"),
    ({"policy_kwargs": {"net_arc": [8]}},
     r"hyperparams\.policy_kwargs: unknown key\(s\) 'net_arc' \(did you mean 'net_arch'\?\)"),
    ({"policy_kwargs": [64, 64]}, r"hyperparams\.policy_kwargs: expected a mapping"),
    ({"learning_rate": "fast"}, r"hyperparams\.learning_rate: must be a number, got 'fast'"),
    ({"n_steps": 0}, r"hyperparams\.n_steps: must be >= 1, got 0"),
    ({"batch_size": 0}, r"hyperparams\.batch_size: must be >= 1, got 0"),
    ({"gamma": 1.5}, r"hyperparams\.gamma: must be <= 1, got 1\.5"),
    ({"seed": 3}, r"hyperparams\.seed: set by train\.py"),
    ({"policy_kwargs": {"net_arch": "wide"}}, r"hyperparams: MaskablePPO refuses them: "),
])
def test_sb3_hyperparams_are_checked_before_training(tmp_path, hp, expected):
    cfg = _write(tmp_path, _with("hyperparams", hp))
    with pytest.raises(ConfigError, match=rf"^{cfg!s}: {expected}"):
        load_train_config(cfg)


def test_sb3_hyperparams_are_checked_against_the_chosen_algorithm(tmp_path):
    cfg = _write(tmp_path, {**TINY, "algo": "dqn", "hyperparams": {"n_epochs": 10}})
    with pytest.raises(ConfigError, match=r"'n_epochs'.* for dqn \(DQN\); valid: .*buffer_size"):
        load_train_config(cfg)


def test_init_action_bias_is_checked_on_the_model_before_training(tmp_path):
    cfg = _write(tmp_path, {**TINY, "init_action_bias": {99: 1.0}})
    with pytest.raises(ConfigError, match=rf"^{cfg!s}: init_action_bias: action 99 outside 0\.\.5"):
        load_train_config(cfg)


# ----------------------------------------------------------------- 5. seeds
def test_a_negative_seed_flag_is_one_error(train_cli, capsys, tmp_path):
    rc, err = _main(train_cli, capsys, "--config", str(_write(tmp_path, TINY)), "--seed", "-1",
                    "--logdir", str(tmp_path / "runs"))
    assert rc == 2 and err.strip() == "error: --seed -1: must be >= 0"
    with pytest.raises(ConfigError, match=r"--seed 4294967296: must be <= 4294967295"):
        load_train_config(_write(tmp_path, TINY), seed=2**32)


# ----------------------------------------------------------------- 6. rllib trains PPO only
def test_an_explicit_sb3_algo_with_rllib_is_an_error_naming_the_field(tmp_path):
    cfg = _write(tmp_path, {**TINY, "backend": "rllib", "algo": "dqn", "hyperparams": {}})
    with pytest.raises(ConfigError, match=rf"^{cfg!s}: algo: dqn is sb3-only; backend: rllib .*trains PPO"):
        load_train_config(cfg)
    sb3_cfg = _write(tmp_path, {**TINY, "hyperparams": {}}, "sb3.yaml")
    with pytest.raises(ConfigError, match=rf"^{sb3_cfg!s}: algo: maskable_ppo is sb3-only; --backend rllib trains PPO"):
        load_train_config(sb3_cfg, backend="rllib")
    with pytest.raises(ConfigError, match=r"^--algo a2c: a2c is sb3-only"):
        load_train_config(ROOT / "configs/train/quickstart_rllib.yaml", algo="a2c")


def test_rllib_without_an_algo_trains_ppo_and_its_hyperparams_name_the_file(tmp_path):
    rllib = {**TINY, "backend": "rllib", "hyperparams": {"lr": 0.001}}
    del rllib["algo"]
    assert load_train_config(_write(tmp_path, rllib)).algo == "ppo"  # nobody asked for another: no error
    cfg = _write(tmp_path, {**rllib, "hyperparams": {"learning_rate": 0.001}})
    with pytest.raises(ConfigError, match=rf"^{cfg!s}: hyperparams: unknown key\(s\) 'learning_rate' "
                                          r"\(did you mean 'lr'\?\)"):
        load_train_config(cfg)


# ----------------------------------------------------------------- 7. flags are blamed, not the file
@pytest.mark.parametrize("flag,value,expected", [
    ("total_steps", 0, "--total-steps 0: must be >= 1"),
    ("n_envs", 0, "--n-envs 0: must be >= 1"),
    ("num_env_runners", -1, "--num-env-runners -1: must be >= 0"),
    ("vec_env", "threads", "--vec-env threads: Input should be 'dummy' or 'subproc'"),
])
def test_a_bad_flag_is_blamed_on_the_flag_not_the_file(flag, value, expected):
    with pytest.raises(ConfigError) as e:
        load_train_config(ROOT / "configs/train/quickstart.yaml", **{flag: value})
    assert str(e.value) == expected


def test_a_bad_value_in_the_file_is_blamed_on_the_file(tmp_path):
    cfg = _write(tmp_path, {**TINY, "total_steps": 0})
    with pytest.raises(ConfigError, match=rf"^{cfg!s}: total_steps: must be >= 1 \(got 0\)$"):
        load_train_config(cfg, seed=1)


# ----------------------------------------------------------------- 8. --config DIRECTORY
def test_a_directory_as_config_says_so(tmp_path):
    with pytest.raises(ConfigError, match="is a directory; --config expects a training YAML file"):
        load_train_config(tmp_path)


# ----------------------------------------------------------------- 9. --help
def test_help_shows_defaults_and_a_working_rllib_example(train_cli):
    text = " ".join(train_cli.build_parser().format_help().split())
    assert "configs/train/quickstart_rllib.yaml" in text
    assert "quickstart.yaml --backend rllib" not in text and "quickstart.yaml \\ --backend rllib" not in text
    for flag, default in (("--backend", "sb3"), ("--algo", "maskable_ppo; rllib: ppo"), ("--total-steps", "20000"),
                          ("--seed", "0"), ("--n-envs", "1"), ("--vec-env", "dummy"), ("--num-env-runners", "0")):
        help_text = next(a.help for a in train_cli.build_parser()._actions if flag in a.option_strings)
        assert f"default: from the config, else {default}" in help_text, flag

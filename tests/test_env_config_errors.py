"""Deploy-v0's options: one clear error for what cannot be meant, naming the option and what is valid."""

from __future__ import annotations

import pytest

from oserve_rl.envs.config import make_config
from oserve_rl.errors import ConfigError


def test_singular_and_plural_of_one_option_at_once_is_an_error():
    with pytest.raises(ConfigError, match=r"cluster='h100x16' and clusters=\['a100x8'\] both given"):
        make_config(cluster="h100x16", clusters=["a100x8"])
    with pytest.raises(ConfigError, match="trace=.* and traces=.* both given"):
        make_config({"trace": "azure-conv", "traces": ["azure-code"]})


def test_a_keyword_overrides_the_options_it_is_given_with():
    assert make_config({"clusters": ["a100x8"]}, cluster="h100x16").clusters == ["h100x16"]
    assert make_config(make_config(clusters=["a100x8"]), cluster="h100x16").clusters == ["h100x16"]


def test_an_unknown_reward_key_lists_the_reward_keys_and_suggests_the_closest():
    with pytest.raises(ConfigError) as e:
        make_config(reward={"p99_ref": 1.0})
    msg = str(e.value)
    assert "'reward.p99_ref'" in msg and "did you mean 'p99_ref_s'" in msg
    assert "valid reward options: goodput_ref_rps, kind, p99_ref_s, slo_penalty, switch_penalty_per_s" in msg


@pytest.mark.parametrize("options, match", [
    ({"start": -5}, r"env option start: start must be 'random' or seconds >= 0 into the trace, got -5"),
    ({"validation_windows": [2400, -1]}, r"env option validation_windows: window starts must be seconds >= 0"),
])
def test_negative_times_into_the_trace_are_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_config(**options)


@pytest.mark.parametrize("options, match", [
    ({"decision_delay_s": float("inf")}, "decision_delay_s: must be a finite number"),
    ({"episode_s": float("inf")}, "episode_s: must be a finite number"),
    ({"slo_ttft_s": 0}, "slo_ttft_s: must be > 0 seconds"),
    ({"rate_scale": [1.0, float("inf")]}, "rate_scale must be > 0"),
])
def test_infinite_or_unreachable_values_are_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        make_config(**options)


SMALL = dict(cluster="h100x8", model="llama-2-7b", trace="azure-conv", episode_s=180, predictor="ewma",
             num_candidates=4, max_replicas=8)


def test_reset_and_step_refuse_what_gymnasium_or_numpy_would_fail_on_deep_inside():
    import numpy as np

    from oserve_rl.envs.deploy import DeployEnv

    env = DeployEnv(**SMALL)
    for seed in (-1, 1.5, "a"):
        with pytest.raises(ConfigError, match="the seed must be a whole number >= 0"):
            env.reset(seed=seed)
    with pytest.raises(ConfigError, match="expected a mapping of reset options"):
        env.reset(seed=0, options=["a"])
    with pytest.raises(ConfigError, match="unknown field 'modell' \\(did you mean 'model'\\?\\)"):
        env.reset(seed=0, options={"scenario": {"cluster": "h100x8", "modell": "x"}})
    with pytest.raises(ConfigError, match="data_seed needs a scenario"):  # it used to be ignored silently
        env.reset(seed=0, options={"data_seed": 7})
    env.reset(seed=0)
    for bad in (2.7, None, float("nan"), np.array([1, 2])):
        with pytest.raises(ConfigError, match=r"expected one integer in \[0, 6\)"):
            env.step(bad)
    env.step(np.array([0]))  # one-element integer arrays, as vectorised code hands over, are fine
    while not env.step(np.int64(0))[2]:
        pass
    with pytest.raises(ConfigError, match="after the episode ended"):
        env.step(0)


def test_a_checkpoint_without_a_readable_space_signature_is_refused(tmp_path):
    from oserve_rl.envs.checkpoints import check_compatible
    from oserve_rl.errors import CheckpointError

    (tmp_path / "model.zip").write_bytes(b"")
    (tmp_path / "config.yaml").write_text("env: {}\n")
    cfg = make_config()
    with pytest.raises(CheckpointError, match="no env_space.json beside checkpoint"):
        check_compatible(tmp_path / "model.zip", cfg)
    (tmp_path / "env_space.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable space signature"):
        check_compatible(tmp_path / "model.zip", cfg)
    (tmp_path / "env_space.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a mapping"):
        check_compatible(tmp_path / "model.zip", cfg)

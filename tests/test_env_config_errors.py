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

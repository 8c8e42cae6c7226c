"""The live controller and the sim-to-real report on real vLLM (CPU) replicas behind a real vllm-router.

Needs .venv-vllm (scripts/setup_live.sh); skipped with that reason otherwise. The policy is a real
MaskablePPO trained for a few steps on a small Deploy-v0 and exported to ONNX; its initial logits are
biased (``init_action_bias``) towards candidate 0, then keep, so that from a deployment that is not
candidate 0 it switches exactly once. Figures are printed with a ``LIVE`` prefix (``-s``); the
assertions are about behaviour only.

    .venv/bin/python -m pytest -q -s -m integration tests/integration/test_live_controller.py
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
VLLM_BIN = REPO / ".venv-vllm" / "bin"
_MISSING = not (VLLM_BIN / "python").exists() or not (VLLM_BIN / "vllm-router").exists()
LIVE_YAML = REPO / "configs" / "live" / "cpu-tiny.yaml"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(_MISSING, reason=f"{VLLM_BIN} has no vLLM / vllm-router: run scripts/setup_live.sh"),
]

SMALL = dict(cluster="h100x8", trace="azure-conv", episode_s=300, num_candidates=4, max_replicas=8, predictor="ewma")
A = {"tp": 1}                                       # live replica standing for the initial deployment
B = {"tp": 1, "extra_args": ["--max-num-seqs=8"]}   # ... and for candidate 0 (TP=1 both: starts fast on 2 cores)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _group_gone(pgid: int | None) -> bool:
    if pgid is None:
        return True
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def _controller_yaml(path: Path, rules: list[dict]) -> Path:
    path.write_text(yaml.safe_dump({
        "live": str(LIVE_YAML), "live_overrides": {"max_replicas": 2},
        "sim": {"cluster": "h100x8", "model": "llama-2-70b", "trace": "azure-conv",
                "env": {"num_candidates": 4, "max_replicas": 8, "predictor": "ewma"}},
        "replica_map": {"count": "per_shape", "max_replicas": 1, "rules": rules},
        "replay": {"replay_speed": 0.8, "max_prompt_tokens": 48, "max_output_tokens": 12, "concurrency": 8},
    }, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def exported_policy(tmp_path_factory) -> Path:
    """A MaskablePPO trained for 32 steps on a small Deploy-v0, exported to ONNX (~25 s)."""
    pytest.importorskip("sb3_contrib")
    pytest.importorskip("onnxruntime")
    from oserve_rl.export.onnx_export import export_checkpoint
    from oserve_rl.train.config import TrainConfig
    from oserve_rl.train.sb3 import train_sb3

    root = tmp_path_factory.mktemp("policy")
    run = root / "run"
    run.mkdir()
    cfg = TrainConfig(env=dict(SMALL), algo="maskable_ppo", total_steps=32, seed=0,
                      hyperparams={"n_steps": 16, "batch_size": 16, "n_epochs": 1},
                      eval={"every_steps": 10_000, "heuristics": [], "windows": [{"start_s": 0.0}]},
                      init_action_bias={2: 6.0, 0: 3.0})
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    (run / "env_space.json").write_text(json.dumps(cfg.env_config().space_signature()) + "\n")
    train_sb3(cfg, run)
    res = export_checkpoint(run, root / "export")
    assert res.agreement is not None and res.agreement[0] == res.agreement[1]
    return root / "export"


@pytest.mark.timeout(900)
def test_controller_switches_under_load_with_an_exported_policy(live_config, exported_policy, tmp_path):
    from oserve_rl.live.controller import (
        build_sim_world,
        load_controller_config,
        load_policy,
        open_controller,
        resolve_env_config,
    )

    policy = load_policy(exported_policy)
    assert policy.kind == "onnx"
    # Map candidate 0's dominant replica shape to live B and everything else to live A; start from a
    # candidate that maps to A, so the biased policy's one switch is a real live switch.
    probe = _controller_yaml(tmp_path / "probe.yaml", [{"sim": {}, "live": A}])
    control = load_controller_config(probe, live=live_config)
    env_cfg, cluster, model, _ = resolve_env_config(policy, control)
    world = build_sim_world(env_cfg, cluster=cluster, model=model, trace="azure-conv", start_s=600.0,
                            duration_s=300.0)
    cand0 = world.candidates[0]
    tp_b = max(cand0.configs, key=lambda c: sum(x.num_gpus for x in cand0.configs if x.tp == c.tp)).tp
    control = load_controller_config(
        _controller_yaml(tmp_path / "ctl.yaml", [{"sim": {"tp": tp_b}, "live": B}, {"sim": {}, "live": A}]),
        live=live_config)
    initial = next(d for d in world.candidates[1:] if control.replica_map.specs(d) != control.replica_map.specs(cand0))

    lines: list[str] = []
    seen: dict[str, object] = {}

    def stop_when(ctl) -> bool:
        seen.setdefault("initial_pgids", [r.pgid for r in ctl.cluster.serving()])  # first call: before any switch
        done = ctl.replay_thread.completed()
        if ctl.switches_done >= 1 and "at_switch" not in seen:
            seen["at_switch"] = done
        return "at_switch" in seen and done >= max(200, seen["at_switch"] + 20)

    with open_controller(exported_policy, control, trace="azure-conv", slice_s=(600.0, 900.0),
                         interval_wall_s=8.0, run_dir=tmp_path / "run", log=lines.append) as ctl:
        res = ctl.run(initial=initial.spec_string(), stop_when=stop_when)
        for rep in ctl.cluster.reports:
            for r in rep.replicas:
                print(f"LIVE   {rep.order} {r.action} {r.replica_id}: "
                      + ", ".join(f"{k} {v:.2f}s" for k, v in r.phases_s.items())
                      + (f", drained={r.drained}, {r.stop_signal}" if r.action == "stop" else ""))
        serving = ctl.cluster.serving()
        workers = ctl.cluster.router.list_workers()
        old_pgids = seen["initial_pgids"]
        router_pgid = ctl.cluster.router_process.pgid
        new_pgids = [r.pgid for r in serving]
    print("\n" + "\n".join(f"LIVE {ln}" for ln in lines))
    s = res.replay_summary
    print(f"LIVE controller replay: {s}")

    assert res.decisions[0].meaning == "initial" and res.decisions[0].target == initial.spec_string()
    switching = [d for d in res.decisions if d.outcome == "switching"]
    assert len(switching) == 1 and switching[0].action == 2 and switching[0].target is not None
    assert switching[0].error is None
    assert res.final_deployment == switching[0].target
    assert len(res.switch_reports) == 2 and res.switch_reports[1].order == "make-before-break"
    assert len(res.switch_reports[1].started) == 1 and len(res.switch_reports[1].stopped) == 1
    assert s["requests"] >= 200 and s["failed"] == 0, res.replay.failures()[:3]
    # The router lists only the new replica, and it is the one candidate 0 maps to.
    assert [r.spec.extra_args for r in serving] == [tuple(B["extra_args"])]
    assert workers == [serving[0].url]
    # No stray processes: the replaced replica went during the switch, the rest when the controller closed.
    assert len(old_pgids) == 1 and all(_group_gone(pg) for pg in old_pgids)
    assert all(_group_gone(pg) for pg in new_pgids) and _group_gone(router_pgid)
    assert not ctl.cluster.backend.replicas()
    rows = [json.loads(x) for x in (tmp_path / "run" / "decisions.jsonl").read_text().splitlines()]
    assert len(rows) == len(res.decisions) and rows[0]["meaning"] == "initial"


@pytest.mark.timeout(900)
def test_live_compare_cli_writes_switch_costs_the_simulator_reads(tiny_model_dir, tmp_path, monkeypatch, capsys):
    import argparse

    from oserve_rl.cluster import load_switch_costs
    from oserve_rl.live import cli

    monkeypatch.chdir(REPO)  # the live config's python / router_bin are relative to the repository root
    cfg = _controller_yaml(tmp_path / "ctl.yaml", [{"sim": {"tp": 4}, "live": B}, {"sim": {}, "live": A}])
    parser = argparse.ArgumentParser()
    cli.add_parser(parser.add_subparsers(dest="cmd", required=True))
    out = tmp_path / "cmp"
    args = parser.parse_args([
        "live", "compare", "--cluster", str(cfg), "--model", str(tiny_model_dir),
        "--live-set", f"router_port={free_port()}", "--live-set", f"router_prometheus_port={free_port()}",
        "--trace", "azure-conv", "--slice", "600:640", "--replay-speed", "1", "--deployment", "4xTP2",
        "--out", str(out)])
    rc = cli.main(args)
    text = capsys.readouterr().out
    with capsys.disabled():
        print("\n" + "\n".join(f"LIVE {ln}" for ln in text.splitlines()))
    assert rc == 0
    report = json.loads((out / "compare.json").read_text())
    assert report["measured"]["failed"] == 0 and report["measured"]["requests"] == report["predicted"]["requests"]
    for key in ("ttft_p50_s", "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "throughput_rps"):
        assert report["predicted"][key] > 0 and report["measured"][key] > 0
    whats = [sw["what"] for sw in report["switches"]]
    assert whats == ["initial", "teardown"]
    started = report["switches"][0]["replicas"][0]["phases_s"]
    stopped = report["switches"][1]["replicas"][0]["phases_s"]
    assert set(started) == {"start", "ready", "route"} and set(stopped) == {"route", "drain", "stop"}
    costs = load_switch_costs(out / "switch_costs.yaml")
    assert costs.mode == "reload" and costs.engine_init_s > 0
    assert costs.router_update_s == pytest.approx(report["switch_costs"]["router_update_s"])
    assert costs.drain_estimate_s == pytest.approx(stopped["drain"], abs=1e-3)

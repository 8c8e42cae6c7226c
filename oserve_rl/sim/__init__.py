"""What happens: vLLM-like replica engines, routing, switching and metrics on a cluster."""

from oserve_rl.sim.simulator import ClusterSimulator, SimResult, SwitchRecord

__all__ = ["ClusterSimulator", "SimResult", "SwitchRecord"]

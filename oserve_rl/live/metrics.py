"""Read a live vLLM replica's load from its Prometheus ``/metrics`` endpoint.

Samples are parsed with ``prometheus_client``'s text parser and summed over
all label sets (``engine`` under DP > 1, ``model_name``), except the KV-cache
usage fraction, which is averaged over engines (each engine has its own cache
of the same size, so a sum would exceed 1). Metric names changed across vLLM
versions; every field accepts the old and the new name (first found wins):

=====================  ================================================================
field                  metric names tried
=====================  ================================================================
``running``            ``vllm:num_requests_running``
``waiting``            ``vllm:num_requests_waiting``
``kv_cache_usage``     ``vllm:kv_cache_usage_perc``, ``vllm:gpu_cache_usage_perc``,
                       ``vllm:cpu_cache_usage_perc`` (0..1 despite the name)
``preemptions``        ``vllm:num_preemptions_total``, ``vllm:num_preemptions``
=====================  ================================================================

>>> text = 'vllm:num_requests_running{engine="0",model_name="m"} 2.0\\n' \\
...        'vllm:num_requests_running{engine="1",model_name="m"} 1.0\\n' \\
...        'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.5\\n'
>>> m = parse_metrics(text)
>>> m.running, m.kv_cache_usage
(3.0, 0.5)
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from oserve_rl.live.backend import LiveClusterError, http_get

RUNNING = ("vllm:num_requests_running",)
WAITING = ("vllm:num_requests_waiting",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "vllm:cpu_cache_usage_perc")
PREEMPTIONS = ("vllm:num_preemptions_total", "vllm:num_preemptions")
PROMPT_TOKENS = ("vllm:prompt_tokens_total",)
GENERATION_TOKENS = ("vllm:generation_tokens_total",)
SUCCESS = ("vllm:request_success_total",)
TTFT = ("vllm:time_to_first_token_seconds",)
E2E = ("vllm:e2e_request_latency_seconds",)


@dataclass(frozen=True)
class ReplicaMetrics:
    """One scrape of one replica. Gauges are current values; ``*_total`` are counters since start.

    Fields are NaN when the server exposes none of the names for them.
    ``samples`` maps every sample name to its value summed over label sets.
    """

    running: float
    waiting: float
    kv_cache_usage: float
    preemptions_total: float
    prompt_tokens_total: float
    generation_tokens_total: float
    requests_success_total: float
    ttft_sum_s: float
    ttft_count: float
    e2e_sum_s: float
    e2e_count: float
    samples: dict[str, float] = field(default_factory=dict, repr=False)

    @property
    def in_flight(self) -> float:
        """Requests the engine holds: running + waiting (0 when drained)."""
        return self.running + self.waiting

    @property
    def mean_ttft_s(self) -> float:
        return self.ttft_sum_s / self.ttft_count if self.ttft_count else math.nan


def _first(sums: dict[str, float], names: tuple[str, ...], suffix: str = "") -> float:
    for n in names:
        if n + suffix in sums:
            return sums[n + suffix]
    return math.nan


def parse_metrics(text: str) -> ReplicaMetrics:
    """Parse Prometheus text exposition into :class:`ReplicaMetrics` (see the module doc for names)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = defaultdict(float)
    kv_values: dict[str, list[float]] = defaultdict(list)
    try:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name in KV_USAGE:
                    kv_values[s.name].append(float(s.value))
                sums[s.name] += float(s.value)
    except ValueError as e:
        raise LiveClusterError(f"metrics text is not Prometheus exposition format: {e}") from None
    kv = math.nan
    for n in KV_USAGE:
        if kv_values.get(n):
            kv = sum(kv_values[n]) / len(kv_values[n])
            break
    return ReplicaMetrics(
        running=_first(sums, RUNNING),
        waiting=_first(sums, WAITING),
        kv_cache_usage=kv,
        preemptions_total=_first(sums, PREEMPTIONS),
        prompt_tokens_total=_first(sums, PROMPT_TOKENS),
        generation_tokens_total=_first(sums, GENERATION_TOKENS),
        requests_success_total=_first(sums, SUCCESS),
        ttft_sum_s=_first(sums, TTFT, "_sum"),
        ttft_count=_first(sums, TTFT, "_count"),
        e2e_sum_s=_first(sums, E2E, "_sum"),
        e2e_count=_first(sums, E2E, "_count"),
        samples=dict(sums),
    )


def fetch_text(target: str, timeout_s: float = 2.0) -> str:
    """GET ``target`` (a full URL); :class:`LiveClusterError` naming it when nothing answers or not 200."""
    try:
        status, body = http_get(target, timeout_s)
    except OSError as e:
        raise LiveClusterError(f"cannot scrape {target}: {e}") from None
    if status != 200:
        raise LiveClusterError(f"cannot scrape {target}: HTTP {status}")
    return body.decode(errors="replace")


def scrape(url: str, timeout_s: float = 2.0) -> ReplicaMetrics:
    """GET ``<url>/metrics`` of a replica (base URL, e.g. ``http://127.0.0.1:8011``) and parse it.

    Raises :class:`LiveClusterError` naming the URL when nothing answers or the status is not 200.
    """
    return parse_metrics(fetch_text(url.rstrip("/") + "/metrics", timeout_s))


def scrape_samples(url: str, timeout_s: float = 2.0) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Raw samples of any Prometheus endpoint (e.g. the router's): name -> {sorted labels: value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = fetch_text(url.rstrip("/"), timeout_s)
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = float(s.value)
    return dict(out)

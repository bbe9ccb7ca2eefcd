"""``GET /metrics``: Prometheus text format (prometheus_client, a registry per app), under vLLM's metric names so the
dashboards and alerts written for vLLM read this server too: requests running/waiting, prompt and generation
tokens, finished requests by reason, time to first token and end-to-end latency histograms."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest  # noqa: F401 (CONTENT_TYPE_LATEST: re-exported for the API)

from lumi.generation.engine import Engine, Output

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)


class ServerMetrics:
    def __init__(self, engine: Engine, model_name: str):
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        for name, doc, value in (("vllm:num_requests_running", "requests in a KV-cache slot", "running"),
                                 ("vllm:num_requests_waiting", "requests waiting for a slot", "waiting")):
            gauge = Gauge(name, doc, list(labels), registry=self.registry)
            gauge.labels(**labels).set_function(lambda key=value: engine.load()[key])
        self.prompt_tokens = Counter("vllm:prompt_tokens", "prompt tokens of finished requests", list(labels),
                                     registry=self.registry).labels(**labels)
        self.generation_tokens = Counter("vllm:generation_tokens", "generated tokens of finished requests",
                                         list(labels), registry=self.registry).labels(**labels)
        self.success = Counter("vllm:request_success", "finished requests by finish reason",
                               [*labels, "finished_reason"], registry=self.registry)
        self.first_token = Histogram("vllm:time_to_first_token_seconds", "submit to first output",
                                     list(labels), buckets=LATENCY_BUCKETS, registry=self.registry).labels(**labels)
        self.latency = Histogram("vllm:e2e_request_latency_seconds", "submit to last output", list(labels),
                                 buckets=LATENCY_BUCKETS, registry=self.registry).labels(**labels)
        self.labels = labels

    def timer(self) -> "RequestTimer":
        return RequestTimer(self)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """One request's clock: fed every output (from the engine thread; prometheus_client is thread-safe)."""

    def __init__(self, metrics: ServerMetrics):
        self.metrics, self.started, self.first = metrics, time.monotonic(), True

    def observe(self, output: Output) -> None:
        now = time.monotonic()
        if self.first and output.token_ids:
            self.metrics.first_token.observe(now - self.started)
            self.first = False
        if output.finish_reason is not None:
            self.metrics.latency.observe(now - self.started)
            self.metrics.prompt_tokens.inc(output.prompt_tokens)
            self.metrics.generation_tokens.inc(output.completion_tokens)
            self.metrics.success.labels(**self.metrics.labels, finished_reason=output.finish_reason).inc()

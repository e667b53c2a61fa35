"""Prometheus metrics of one engine, in a registry of its own (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest

# The *_created series (a timestamp per counter) only add noise to a scrape.
disable_created_metrics()

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, model_name: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_name}
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, registry=r, labelnames=list(labels)).labels(**labels)

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, registry=r, labelnames=list(labels)).labels(**labels)

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(name, doc, registry=r, labelnames=list(labels), buckets=_LATENCY_BUCKETS).labels(**labels)

        self.waiting = gauge("inference_requests_waiting", "Requests waiting to be scheduled (incl. preempted)")
        self.running = gauge("inference_requests_running", "Requests in the running batch")
        self.kv_blocks_used = gauge("inference_kv_blocks_used", "KV cache blocks in use")
        self.kv_blocks_total = gauge("inference_kv_blocks_total", "KV cache blocks in the pool")
        self.prompt_tokens = counter("inference_prompt_tokens", "Prompt tokens of admitted requests")
        self.generation_tokens = counter("inference_generation_tokens", "Generated tokens")
        self.preemptions = counter("inference_preemptions", "Sequences preempted for recomputation")
        self.requests_rejected = counter("inference_requests_rejected", "Requests refused with 429 (queue full)")
        self.requests_aborted = counter("inference_requests_aborted", "Requests dropped by their client")
        self.finished = Counter(
            "inference_sequences_finished",
            "Finished samples by finish reason",
            registry=r,
            labelnames=["model_name", "finish_reason"],
        )
        self.time_to_first_token = histogram("inference_time_to_first_token_seconds", "Arrival to first token")
        self.inter_token_latency = histogram("inference_inter_token_latency_seconds", "Between two tokens of a sample")
        self.e2e_latency = histogram("inference_e2e_request_latency_seconds", "Arrival to last token")
        self.preemptions_seen = 0
        self._model_name = model_name

    def finished_reason(self, reason: str) -> Counter:
        return self.finished.labels(self._model_name, reason)

    def render(self) -> bytes:
        return generate_latest(self.registry)

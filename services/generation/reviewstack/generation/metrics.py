"""Prometheus metrics under TGI's names, so that dashboards made for TGI read the embedded engine too."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_SECONDS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKENS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

REQUEST_COUNT = Counter("tgi_request_count", "generation requests received")
REQUEST_SUCCESS = Counter("tgi_request_success", "requests that finished")
REQUEST_FAILURE = Counter("tgi_request_failure", "requests that failed or were cancelled")
VALIDATION_FAILURE = Counter("tgi_request_validation_failure", "requests refused by validation (422)")
OVERLOADED = Counter("tgi_request_overloaded", "requests refused because the engine was full (429)")
REQUEST_DURATION = Histogram("tgi_request_duration", "seconds from arrival to the end", buckets=_SECONDS)
QUEUE_DURATION = Histogram("tgi_request_queue_duration", "seconds spent waiting for a slot", buckets=_SECONDS)
PREFILL_DURATION = Histogram("tgi_batch_forward_duration_prefill", "seconds per prefill", buckets=_SECONDS)
DECODE_DURATION = Histogram("tgi_batch_forward_duration_decode", "seconds per decode step", buckets=_SECONDS)
INPUT_LENGTH = Histogram("tgi_request_input_length", "prompt tokens per request", buckets=_TOKENS)
GENERATED_TOKENS = Histogram("tgi_request_generated_tokens", "tokens generated per request", buckets=_TOKENS)
QUEUE_SIZE = Gauge("tgi_queue_size", "requests waiting for a slot")
BATCH_SIZE = Gauge("tgi_batch_current_size", "requests in the running batch")

"""The server's Prometheus metrics (``GET /metrics``, text format), on ``prometheus_client`` with one registry per
server so that several servers (tests) in one process do not share counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: latency buckets (seconds): cached files answer in milliseconds, first builds in about a second
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """Requests, latency, builds, cache hits and misses, and the cache's size."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pocketrec_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("pocketrec_request_seconds", "request latency by route", ["route"],
                                 buckets=BUCKETS, registry=r)
        self.builds = Counter("pocketrec_builds", "device files and deltas built", ["kind"], registry=r)
        self.build_failures = Counter("pocketrec_build_failures", "builds that failed (answered 5xx, not cached)",
                                      ["kind"], registry=r)
        self.build_seconds = Histogram("pocketrec_build_seconds", "time of one build", ["kind"], buckets=BUCKETS,
                                       registry=r)
        self.cache = Counter("pocketrec_cache", "file requests by outcome: hit (on disk), miss (built), shared "
                                                "(waited for a build already running)", ["outcome"], registry=r)
        self.cache_bytes = Gauge("pocketrec_cache_bytes", "bytes of the files in the disk cache", registry=r)
        self.cache_files = Gauge("pocketrec_cache_files", "files in the disk cache", registry=r)
        self.evictions = Counter("pocketrec_cache_evictions", "files evicted from the cache", registry=r)
        for kind in ("artifact", "delta"):  # every series from the start, at 0
            self.builds.labels(kind)
            self.build_failures.labels(kind)
        for outcome in ("hit", "miss", "shared"):
            self.cache.labels(outcome)

    def text(self) -> bytes:
        return generate_latest(self.registry)

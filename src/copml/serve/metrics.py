"""Prometheus metrics of one serving process (``GET /metrics``)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "copml_requests_total",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "copml_request_latency_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.predictions = Counter(
            "copml_predictions_total",
            "Predictions by model version and class code (1: a binary's positive)",
            ["model_version", "label"],
            registry=self.registry,
        )
        self.reviews = Counter(
            "copml_reviews_total", "Predictions sent to human review", registry=self.registry
        )
        self.model_loads = Counter(
            "copml_model_loads_total",
            "Champion loads by result",
            ["result"],
            registry=self.registry,
        )

        self.arms = Counter(
            "copml_arm_predictions_total",
            "Predictions by arm (champion, canary; shadow: scored, never answered) and version",
            ["arm", "model_version"],
            registry=self.registry,
        )
        self.shadow_dropped = Counter(
            "copml_shadow_dropped_total",
            "Answered groups the shadow did not score: it had fallen behind",
            registry=self.registry,
        )

    def by_arm(self, arm: str, version: str, n: int) -> None:
        self.arms.labels(arm, version).inc(n)

    def scored(self, version: str, label: np.ndarray, review: np.ndarray) -> None:
        """Count a committed group by its decisions' class codes (1: a binary's positive)."""
        codes, counts = np.unique(np.asarray(label, dtype=np.int64), return_counts=True)
        for code, count in zip(codes.tolist(), counts.tolist(), strict=True):
            self.predictions.labels(version, str(code)).inc(count)
        self.reviews.inc(int(review.sum()))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every request by its route template (not its raw path) and status."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = {"code": 500}

        async def capture(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(name, str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)

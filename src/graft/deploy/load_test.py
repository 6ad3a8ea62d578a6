"""A bounded load test of a running ``graft serve``: ``clients`` concurrent clients send ``requests`` requests
in all, each one image, and the latency percentiles, status codes and answered labels are counted.
Used by the tests (small) and ``bench/serve_load.py`` (the figures in BENCHMARKS.md)."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import numpy as np


def load_test(
    url: str, image: str | Path, clients: int = 8, requests: int = 400, timeout: float = 30.0
) -> dict[str, Any]:
    """Send ``requests`` POST /predict requests of ``image`` from ``clients`` concurrent connections."""
    return asyncio.run(_load(url.rstrip("/") + "/predict", Path(image), clients, requests, timeout))


async def _load(url: str, image: Path, clients: int, requests: int, timeout: float) -> dict[str, Any]:
    import httpx

    data = image.read_bytes()
    latencies: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    labels: collections.Counter[str] = collections.Counter()
    errors: list[str] = []
    remaining = iter(range(requests))

    async def client(session: httpx.AsyncClient) -> None:
        for _ in remaining:
            began = time.perf_counter()
            try:
                response = await session.post(url, files={"file": (image.name, data)})
            except httpx.HTTPError as error:
                errors.append(f"{type(error).__name__}: {error}")
                continue
            latencies.append(time.perf_counter() - began)
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                labels[str(response.json()[0].get("label"))] += 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    seconds = time.perf_counter() - began
    milliseconds = np.array(latencies) * 1000 if latencies else np.zeros(1)
    return {
        "clients": clients,
        "requests": requests,
        "seconds": seconds,
        "requests_per_s": len(latencies) / seconds,
        "p50_ms": float(np.percentile(milliseconds, 50)),
        "p95_ms": float(np.percentile(milliseconds, 95)),
        "p99_ms": float(np.percentile(milliseconds, 99)),
        "max_ms": float(milliseconds.max()),
        "statuses": dict(statuses),
        "server_errors": sum(count for status, count in statuses.items() if status.startswith("5")),
        "errors": len(errors),
        "error_examples": errors[:5],
        "labels": dict(labels),
    }

"""One scrape answers every worker's series (server/worker_metrics.py), here
with the workers' Metrics in one process; tests/e2e/test_workers.py scrapes
the real process tree."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from server.metrics import Metrics
from server.worker_metrics import WorkerMetrics, dump, load, socket_path


def samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples if s.name == name}


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[list[WorkerMetrics]]:
    started = []
    for index, requests in ((1, 3), (2, 5)):
        metrics = Metrics()
        for _ in range(requests):
            metrics.record("/{name}", "GET", 200, 0.001, None)
        worker = WorkerMetrics(metrics, tmp_path, index, 2)
        await worker.start()
        started.append(worker)
    yield started
    for worker in started:
        await worker.close()


async def test_a_scrape_of_any_worker_has_every_workers_series(workers: list[WorkerMetrics]) -> None:
    for worker in workers:
        body, content_type = await worker.render()
        assert content_type.startswith("text/plain")
        text = body.decode()
        requests = samples(text, "overlaystore_http_requests_total")
        labels = (("method", "GET"), ("route", "/{name}"), ("status", "200"))
        assert requests == {(*labels, ("worker", "1")): 3.0, (*labels, ("worker", "2")): 5.0}
        assert samples(text, "overlaystore_worker_scrape_up") == {(("worker", "1"),): 1.0, (("worker", "2"),): 1.0}
        # each family once, however many workers have it
        assert text.count("# TYPE overlaystore_http_requests_total counter") == 1


async def test_openmetrics_keeps_created_inside_the_counter(workers: list[WorkerMetrics]) -> None:
    body, content_type = await workers[0].render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    families = {f.name: f for f in openmetrics_families(body.decode())}  # raises on a malformed exposition
    names = {s.name for s in families["overlaystore_http_requests"].samples}
    assert names == {"overlaystore_http_requests_total", "overlaystore_http_requests_created"}


async def test_a_worker_that_does_not_answer_is_reported_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    metrics.record("/{name}", "GET", 200, 0.001, None)
    alone = WorkerMetrics(metrics, tmp_path, 1, 3)
    await alone.start()
    socket_path(tmp_path, 3).write_bytes(b"")  # not a socket: a stale leftover
    try:
        with caplog.at_level(logging.WARNING, logger="overlaystore.server"):
            body, _ = await alone.render()
    finally:
        await alone.close()
    text = body.decode()
    assert samples(text, "overlaystore_worker_scrape_up") == {
        (("worker", "1"),): 1.0, (("worker", "2"),): 0.0, (("worker", "3"),): 0.0}
    assert {dict(k)["worker"] for k in samples(text, "overlaystore_http_requests_total")} == {"1"}
    assert "worker 2 did not answer" in caplog.text and "worker 3 did not answer" in caplog.text
    assert not socket_path(tmp_path, 1).exists()  # close() removes its socket


def test_the_wire_format_round_trips_and_refuses_a_torn_dump() -> None:
    metrics = Metrics()
    metrics.record("/{name}", "PUT", 201, 0.002, None)
    raw = dump(metrics.registry)
    families = {f.name: f for f in load(raw, 4)}
    original = {f.name: f for f in metrics.registry.collect()}
    assert families.keys() == original.keys()
    for name, family in original.items():
        assert [(s.name, {**s.labels, "worker": "4"}, s.value) for s in family.samples] == [
            (s.name, s.labels, s.value) for s in families[name].samples]
    with pytest.raises(ValueError):
        load(raw[: len(raw) // 2], 4)

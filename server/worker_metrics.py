"""Every worker's metrics in one scrape (``overlaystore serve --workers N``).

Each worker counts what it serves in its own :class:`~server.metrics.Metrics`
(and has its own LRU and upstream client). Prometheus scrapes whichever
worker the kernel hands the connection to, so per-worker answers would make
every counter jump between unrelated values from one scrape to the next.
Instead each worker also listens on a Unix socket in a directory the
supervisor creates (mode 0700, removed when it exits), and the worker that
answers ``GET /-/metrics`` reads the other workers' series from their
sockets and serves all of them, each sample labelled ``worker="<n>"``
(``sum without (worker)`` gives the server's totals), plus
``overlaystore_worker_scrape_up{worker}``: 0 for a worker that did not answer
within :data:`PEER_TIMEOUT_S`, whose series are then absent from that scrape.

On a socket the worker writes its metric families as JSON and closes;
nothing is read. JSON rather than the text exposition keeps a counter's
``_created`` sample inside its family, as OpenMetrics requires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Final

import orjson
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from .metrics import Metrics

log = logging.getLogger("overlaystore.server")

#: How long a scrape waits for another worker's series.
PEER_TIMEOUT_S: Final = 2.0


def socket_path(directory: Path, worker: int) -> Path:
    """Where worker ``worker`` (1..N) answers for its metrics."""
    return directory / f"worker-{worker}.sock"


def dump(registry: CollectorRegistry) -> bytes:
    """``registry``'s families in the wire format (see the module docstring)."""
    return orjson.dumps([
        [m.name, m.documentation, m.type, m.unit, [[s.name, s.labels, s.value] for s in m.samples]]
        for m in registry.collect()
    ])


def load(raw: bytes, worker: int) -> list[Metric]:
    """The families of :func:`dump`, every sample labelled ``worker``.
    Raises ValueError for bytes that are not such a dump (a worker that
    died while writing)."""
    try:
        return [_labelled(name, documentation, kind, unit, samples, worker)
                for name, documentation, kind, unit, samples in orjson.loads(raw)]
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise ValueError(f"worker {worker} sent no metrics dump") from exc


def _labelled(name: str, documentation: str, kind: str, unit: str,
              samples: Iterable[Sequence[Any]], worker: int) -> Metric:
    family = Metric(name, documentation, kind, unit)
    label = str(worker)
    for sample, labels, value, *_ in samples:  # a dump's rows, or prometheus_client's Samples
        # orjson writes NaN as null
        family.add_sample(sample, {**labels, "worker": label}, float("nan") if value is None else value)
    return family


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


class WorkerMetrics:
    """This worker's socket, and the scrape that gathers every worker."""

    def __init__(self, metrics: Metrics, directory: Path, worker: int, workers: int) -> None:
        self._metrics = metrics
        self._directory = directory
        self._worker = worker
        self._workers = workers
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = socket_path(self._directory, self._worker)
        path.unlink(missing_ok=True)
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        socket_path(self._directory, self._worker).unlink(missing_ok=True)

    async def _answer(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(dump(self._metrics.registry))
            await writer.drain()
        except ConnectionError:
            pass  # the scrape gave up on us
        finally:
            writer.close()

    async def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition of every worker for an ``Accept`` header, and its
        content type (as :meth:`Metrics.render`)."""
        others = [w for w in range(1, self._workers + 1) if w != self._worker]
        answers = await asyncio.gather(*(self._read(w) for w in others))
        merged: dict[str, Metric] = {}
        up = GaugeMetricFamily("overlaystore_worker_scrape_up",
                               "1 if the worker's series are in this scrape, 0 if it did not answer",
                               labels=["worker"])
        own = [_labelled(m.name, m.documentation, m.type, m.unit, m.samples, self._worker)
               for m in self._metrics.registry.collect()]
        for worker, families in [(self._worker, own), *zip(others, answers)]:
            up.add_metric([str(worker)], 0.0 if families is None else 1.0)
            for family in families or ():
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Families([*merged.values(), up]))
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type

    async def _read(self, worker: int) -> list[Metric] | None:
        path = socket_path(self._directory, worker)
        try:
            async with asyncio.timeout(PEER_TIMEOUT_S):
                reader, writer = await asyncio.open_unix_connection(str(path))
                try:
                    return load(await reader.read(), worker)
                finally:
                    writer.close()
        except (OSError, TimeoutError, ValueError) as exc:
            log.warning("metrics: worker %d did not answer (%s); its series are left out of this scrape",
                        worker, exc or type(exc).__name__)
            return None


__all__ = ["PEER_TIMEOUT_S", "WorkerMetrics", "dump", "load", "socket_path"]

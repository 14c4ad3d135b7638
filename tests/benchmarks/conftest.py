"""Fixtures of the benchmark-harness tests: one small synthetic corpus per session."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.corpus import Corpus
from benchmarks.corpus_synthetic import synthesize
from benchmarks.nginx_peer import find_nginx

#: ~12 packages, the huge document ~175 versions: the full shape in well under a second
SMALL_SCALE = 0.05


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return synthesize(tmp_path_factory.mktemp("corpus") / "synthetic", scale=SMALL_SCALE)


def servers() -> list[object]:
    """The static servers to test: nginx (skipped with a reason when absent) and the fallback."""
    return [
        pytest.param("nginx", marks=pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")),
        "aiohttp",
    ]


requires_nginx = pytest.mark.skipif(find_nginx() is None, reason="nginx is not installed")
requires_npm = pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder on tmpfs when there is one: npm's many small writes are slow on disk."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="overlaystore-bench-test-") as scratch:
        yield Path(scratch)

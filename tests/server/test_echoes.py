"""CacheEchoes: a change reported under the cache root is skipped only when
this process wrote that name within the window and its packument is still
there; removals and other processes' names always invalidate."""

from __future__ import annotations

from pathlib import Path

from overlaystore._types import PackageName
from server.echoes import CacheEchoes


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cached(root: Path, name: str) -> PackageName:
    (root / name).mkdir(parents=True, exist_ok=True)
    (root / name / "packument.json").write_text("{}")
    return PackageName(name)


def test_own_recent_writes_are_echoes(tmp_path: Path) -> None:
    clock = Clock()
    echoes = CacheEchoes(tmp_path, clock=clock, window_s=2.0)
    mine, scoped, other = cached(tmp_path, "mine"), cached(tmp_path, "@s/pkg"), cached(tmp_path, "other")
    echoes.wrote(mine)
    echoes.wrote(scoped)
    clock.now += 0.5
    assert echoes.foreign({mine, scoped, other}) == {other}
    assert echoes.foreign({mine}) == set()  # a write reports twice (body, then meta)


def test_echo_window_expires(tmp_path: Path) -> None:
    clock = Clock()
    echoes = CacheEchoes(tmp_path, clock=clock, window_s=2.0)
    mine = cached(tmp_path, "mine")
    echoes.wrote(mine)
    clock.now += 2.5
    assert echoes.foreign({mine}) == {mine}


def test_removal_is_never_an_echo(tmp_path: Path) -> None:
    clock = Clock()
    echoes = CacheEchoes(tmp_path, clock=clock)
    mine = cached(tmp_path, "mine")
    echoes.wrote(mine)
    (tmp_path / "mine" / "packument.json").unlink()  # a cache clear right after our write
    assert echoes.foreign({mine}) == {mine}


def test_memory_stays_bounded_by_the_window(tmp_path: Path) -> None:
    clock = Clock()
    echoes = CacheEchoes(tmp_path, clock=clock, window_s=1.0)
    for i in range(1000):
        echoes.wrote(PackageName(f"pkg{i}"))
        clock.now += 0.01
    assert len(echoes._written) <= 101

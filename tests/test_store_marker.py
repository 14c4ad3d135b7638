"""The store marker (overlaystore/store_marker.py): a root is opened only in
its own role, and not by a version older than its format."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from overlaystore import LayeredStore
from overlaystore.errors import WrongStore
from overlaystore.store_marker import FORMATS, MARKER, claim


def marker_of(root: Path) -> dict[str, object]:
    return dict(json.loads((root / MARKER).read_text()))


def test_a_new_root_is_created_and_marked(tmp_path: Path) -> None:
    claim(tmp_path / "pub", "published")
    claim(tmp_path / "cache", "cache")
    assert marker_of(tmp_path / "pub") == {"store": "published", "format": FORMATS["published"]}
    assert marker_of(tmp_path / "cache") == {"store": "cache", "format": FORMATS["cache"]}
    claim(tmp_path / "pub", "published")  # again: fine, unchanged
    assert marker_of(tmp_path / "pub")["store"] == "published"


@pytest.mark.parametrize(("layout", "role", "other"), [
    ("left-pad/package-meta.json", "cache", "published"),
    ("left-pad/versions/1.0.0.json", "cache", "published"),
    ("@acme/widget/versions/1.0.0.json", "cache", "published"),
    ("left-pad/packument.json", "published", "cache"),
    ("@types/node/packument.meta", "published", "cache"),
])
def test_an_unmarked_root_with_the_other_layout_is_refused(tmp_path: Path, layout: str, role: str,
                                                            other: str) -> None:
    (tmp_path / layout).parent.mkdir(parents=True)
    (tmp_path / layout).write_text("{}")
    with pytest.raises(WrongStore, match=f"holds the {other} store, not the {role} store"):
        claim(tmp_path, role)  # type: ignore[arg-type]
    assert not (tmp_path / MARKER).exists()


def test_an_unmarked_store_from_before_markers_is_claimed(tmp_path: Path) -> None:
    (tmp_path / "left-pad" / "versions").mkdir(parents=True)
    (tmp_path / "left-pad" / "left-pad-1.0.0.tgz").write_bytes(b"tgz")  # tarballs say nothing
    claim(tmp_path, "published")
    assert marker_of(tmp_path)["store"] == "published"


def test_a_marked_root_is_opened_in_its_role_only(tmp_path: Path) -> None:
    claim(tmp_path, "cache")
    with pytest.raises(WrongStore, match="holds the cache store, not the published store"):
        claim(tmp_path, "published")


def test_a_newer_format_is_refused_and_left_alone(tmp_path: Path) -> None:
    newer = json.dumps({"store": "published", "format": FORMATS["published"] + 1})
    (tmp_path / MARKER).write_text(newer)
    with pytest.raises(WrongStore, match="written by a newer overlaystore"):
        claim(tmp_path, "published")
    assert (tmp_path / MARKER).read_text() == newer


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"store": "other", "format": 1}',
                                  '{"store": "cache", "format": "1"}', '{"store": "cache", "format": 0}'])
def test_a_garbled_marker_is_refused(tmp_path: Path, text: str) -> None:
    (tmp_path / MARKER).write_text(text)
    with pytest.raises(WrongStore, match="not an overlaystore store marker"):
        claim(tmp_path, "cache")


def test_concurrent_claims_agree(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            claim(tmp_path / "shared", "published")
        except BaseException as exc:  # noqa: BLE001 - collected for the assert
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert marker_of(tmp_path / "shared")["store"] == "published"


async def test_swapped_roots_do_not_open(tmp_path: Path) -> None:
    await LayeredStore.open_directories(tmp_path / "a", tmp_path / "b")
    with pytest.raises(WrongStore):
        await LayeredStore.open_directories(tmp_path / "b", tmp_path / "a")


async def test_a_cache_wipe_keeps_the_marker(tmp_path: Path) -> None:
    store = await LayeredStore.open_directories(tmp_path / "pub", tmp_path / "cache")
    await store.cache.put("p/packument.json", b"{}")
    await store.cache.wipe()
    assert marker_of(tmp_path / "cache")["store"] == "cache"

"""The storage contract, once, run against every backend and every layer.

``BackendContract`` is the conformance suite of :class:`overlaystore.backend.Backend`;
``PublishedLayerContract`` / ``CacheLayerContract`` check the layer policies.
Each is subclassed per backend (``OnFile`` / ``OnMemory``), so a new backend is
one more mixin. FileBackend-only behaviour (hidden files, vanished roots)
is at the end.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from pathlib import Path

import pytest

from overlaystore.backend import Backend, BlobInfo, BlobWriter, Write
from overlaystore.cache import CacheLayer
from overlaystore.disk import FileBackend
from overlaystore.errors import AlreadyPublished, InvalidInput, StorageError, StorageFull
from overlaystore.layered import LayeredStore
from overlaystore.memory import MemoryBackend
from overlaystore.published import PublishedLayer

BAD_KEYS = ["", "/a", "a/", "a//b", "..", "a/../b", "./a", ".locks/x.lock", "a/.tmp.1.2.b", "a\\b", "a/b\x00"]


class OnFile:
    @pytest.fixture
    def backend(self, tmp_path: Path) -> Backend:
        return FileBackend(tmp_path / "store")


class OnMemory:
    @pytest.fixture
    def backend(self) -> Backend:
        return MemoryBackend()


class BackendContract:
    """What every Backend must do."""

    async def test_missing_key_reads_none(self, backend: Backend) -> None:
        assert await backend.read("nope/x") is None
        assert await backend.info("nope/x") is None
        assert await backend.read_many(["nope/x"], children_of=["nope/"]) == {}
        assert await backend.list_keys() == []
        assert await backend.package_names() == []

    async def test_write_then_read(self, backend: Backend) -> None:
        await backend.write("@acme/w/versions/1.0.0.json", b"{}", replace=False)
        assert await backend.read("@acme/w/versions/1.0.0.json") == b"{}"
        info = await backend.info("@acme/w/versions/1.0.0.json")
        assert info is not None and info.size == 2 and info.key == "@acme/w/versions/1.0.0.json"

    async def test_write_once_refuses_and_keeps_bytes(self, backend: Backend) -> None:
        await backend.write("p/a", b"first", replace=False)
        with pytest.raises(AlreadyPublished) as caught:
            await backend.write("p/a", b"second", replace=False)
        assert caught.value.key == "p/a"
        assert await backend.read("p/a") == b"first"

    async def test_write_in_order_stops_at_the_first_failure(self, backend: Backend) -> None:
        await backend.write("p/taken", b"kept", replace=False)
        await backend.write("p/meta", b"old", replace=True)
        with pytest.raises(AlreadyPublished) as caught:
            await backend.write_in_order([
                Write("p/a.tgz", b"tarball", replace=False),
                Write("p/taken", b"lost", replace=False),
                Write("p/meta", b"new", replace=True),
            ])
        assert caught.value.key == "p/taken"
        assert await backend.read("p/a.tgz") == b"tarball"  # before the failure: done
        assert await backend.read("p/taken") == b"kept"
        assert await backend.read("p/meta") == b"old"  # after it: not attempted
        await backend.write_in_order([Write("p/b.tgz", b"b", replace=False), Write("p/meta", b"new", replace=True)])
        assert await backend.read_many(["p/b.tgz", "p/meta"]) == {"p/b.tgz": b"b", "p/meta": b"new"}

    async def test_replace(self, backend: Backend) -> None:
        await backend.write("p/a", b"first", replace=True)
        await backend.write("p/a", b"second!", replace=True)
        assert await backend.read("p/a") == b"second!"
        info = await backend.info("p/a")
        assert info is not None and info.size == 7

    async def test_empty_value(self, backend: Backend) -> None:
        await backend.write("p/empty", b"", replace=False)
        assert await backend.read("p/empty") == b""

    async def test_read_many_keys_and_children(self, backend: Backend) -> None:
        for key in ["p/meta", "p/versions/1.json", "p/versions/2.json", "p/versions/deep/3.json", "q/x"]:
            await backend.write(key, key.encode(), replace=False)
        got = await backend.read_many(["p/meta", "p/missing"], children_of=["p/versions/", "absent/"])
        assert got == {
            "p/meta": b"p/meta",
            "p/versions/1.json": b"p/versions/1.json",
            "p/versions/2.json": b"p/versions/2.json",
        }

    async def test_list_keys_sorted_recursive_with_prefix(self, backend: Backend) -> None:
        for key in ["b/2", "a/1", "@s/n/x/y", "a/z/3"]:
            await backend.write(key, b"12345", replace=True)
        infos = await backend.list_keys()
        assert [i.key for i in infos] == ["@s/n/x/y", "a/1", "a/z/3", "b/2"]
        assert all(isinstance(i, BlobInfo) and i.size == 5 for i in infos)
        assert [i.key for i in await backend.list_keys("a/")] == ["a/1", "a/z/3"]
        assert await backend.list_keys("c/") == []

    async def test_list_children_direct_only_with_tags(self, backend: Backend) -> None:
        for key in ["p/versions/2.json", "p/versions/1.json", "p/versions/sub/3.json", "p/meta", "q/versions/1.json"]:
            await backend.write(key, b"x", replace=False)
        children = await backend.list_children("p/versions/")
        assert list(children) == ["p/versions/1.json", "p/versions/2.json"]
        assert all(isinstance(tag, str) and tag for tag in children.values())
        assert await backend.list_children("absent/") == {}
        assert await backend.list_children("p/versions/") == children  # stable while unchanged
        with pytest.raises(InvalidInput):
            await backend.list_children("p/versions")

    async def test_read_and_list(self, backend: Backend) -> None:
        assert await backend.read_and_list("p/meta", "p/versions/") == (None, {})
        for key in ["p/versions/1.json", "p/meta"]:
            await backend.write(key, b"x", replace=False)
        data, listed = await backend.read_and_list("p/meta", "p/versions/")
        assert data == b"x" and listed == await backend.list_children("p/versions/")
        with pytest.raises(InvalidInput):
            await backend.read_and_list("p/../meta", "p/versions/")

    async def test_list_children_tag_changes_on_replace(self, backend: Backend) -> None:
        await backend.write("p/a", b"first", replace=True)
        before = (await backend.list_children("p/"))["p/a"]
        await backend.write("p/a", b"first", replace=True)  # same bytes, new write
        assert (await backend.list_children("p/"))["p/a"] != before

    async def test_package_names(self, backend: Backend) -> None:
        for key in ["lodash/a.tgz", "@acme/w/versions/1.json", "@acme/x/p", "z/p"]:
            await backend.write(key, b"x", replace=False)
        assert await backend.package_names() == ["@acme/w", "@acme/x", "lodash", "z"]

    async def test_delete(self, backend: Backend) -> None:
        await backend.write("p/a", b"x", replace=False)
        assert await backend.delete("p/a") is True
        assert await backend.delete("p/a") is False
        assert await backend.read("p/a") is None
        # a deleted write-once key can be written again (published layer has no delete)
        await backend.write("p/a", b"y", replace=False)
        assert await backend.read("p/a") == b"y"

    async def test_delete_many(self, backend: Backend) -> None:
        for key in ["p/a", "p/b", "q/c"]:
            await backend.write(key, b"x", replace=False)
        assert await backend.delete_many(["p/a", "q/c", "q/missing"]) == 2
        assert [i.key for i in await backend.list_keys()] == ["p/b"]

    async def test_delete_prefix(self, backend: Backend) -> None:
        for key in ["@s/a/1", "@s/a/d/2", "@s/ab/3", "b/4"]:
            await backend.write(key, b"x", replace=False)
        assert await backend.delete_prefix("@s/a/") == 2
        assert [i.key for i in await backend.list_keys()] == ["@s/ab/3", "b/4"]
        assert await backend.delete_prefix("nothing/") == 0
        assert await backend.delete_prefix("") == 2
        assert await backend.list_keys() == []
        assert await backend.package_names() == []

    async def test_delete_prefix_needs_directory_prefix(self, backend: Backend) -> None:
        with pytest.raises(InvalidInput):
            await backend.delete_prefix("@s/a")

    @pytest.mark.parametrize("key", BAD_KEYS)
    async def test_invalid_keys_refused(self, backend: Backend, key: str) -> None:
        with pytest.raises(InvalidInput):
            await backend.read(key)
        with pytest.raises(InvalidInput):
            await backend.write(key, b"x", replace=True)
        with pytest.raises(InvalidInput):
            await backend.delete(key)

    async def test_streaming_writer_commit(self, backend: Backend) -> None:
        writer = await backend.open_writer("p/big.tgz", replace=False)
        assert isinstance(writer, BlobWriter)
        chunks = [os.urandom(100_000) for _ in range(5)]
        for chunk in chunks:
            await writer.write(chunk)
            assert await backend.read("p/big.tgz") is None  # invisible until commit
        assert writer.size == 500_000
        await writer.commit()
        assert await backend.read("p/big.tgz") == b"".join(chunks)
        await writer.abort()  # no-op after commit
        assert await backend.read("p/big.tgz") == b"".join(chunks)

    async def test_streaming_writer_context_aborts_on_error(self, backend: Backend) -> None:
        with pytest.raises(RuntimeError):
            async with await backend.open_writer("p/x.tgz", replace=True) as writer:
                await writer.write(b"partial")
                raise RuntimeError("client went away")
        assert await backend.read("p/x.tgz") is None
        assert await backend.list_keys() == []

    async def test_streaming_writer_context_without_commit_aborts(self, backend: Backend) -> None:
        async with await backend.open_writer("p/x.tgz", replace=True) as writer:
            await writer.write(b"partial")
        assert await backend.read("p/x.tgz") is None

    async def test_streaming_writer_write_once(self, backend: Backend) -> None:
        await backend.write("p/x", b"original", replace=False)
        async with await backend.open_writer("p/x", replace=False) as writer:
            await writer.write(b"other")
            with pytest.raises(AlreadyPublished):
                await writer.commit()
        assert await backend.read("p/x") == b"original"
        assert [i.key for i in await backend.list_keys()] == ["p/x"]

    async def test_streaming_writer_replace(self, backend: Backend) -> None:
        await backend.write("p/x", b"original", replace=True)
        async with await backend.open_writer("p/x", replace=True) as writer:
            await writer.write(b"new")
            await writer.commit()
        assert await backend.read("p/x") == b"new"

    async def test_lock_is_exclusive_per_name(self, backend: Backend) -> None:
        inside: list[str] = []
        overlaps: list[tuple[str, ...]] = []

        async def worker(name: str, tag: str) -> None:
            async with backend.lock(name):
                inside.append(tag)
                overlaps.append(tuple(inside))
                await asyncio.sleep(0.005)
                inside.remove(tag)

        await asyncio.gather(*(worker("@acme/w", f"w{i}") for i in range(5)))
        assert all(len(o) == 1 for o in overlaps)

    async def test_locks_of_different_names_are_independent(self, backend: Backend) -> None:
        async with backend.lock("a"):
            await asyncio.wait_for(_enter(backend, "@s/b"), timeout=2)

    async def test_lock_released_on_error_and_cancel(self, backend: Backend) -> None:
        with pytest.raises(RuntimeError):
            async with backend.lock("p"):
                raise RuntimeError
        async with backend.lock("p"):
            task = asyncio.create_task(_enter(backend, "p"))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.wait_for(_enter(backend, "p"), timeout=2)

    async def test_lock_needs_a_package_name(self, backend: Backend) -> None:
        with pytest.raises(InvalidInput):
            async with backend.lock("a/b"):
                pass

    async def test_recover_on_clean_store(self, backend: Backend) -> None:
        report = await backend.recover()
        assert report.temp_files == 0


async def _enter(backend: Backend, name: str) -> None:
    async with backend.lock(name):
        pass


class TestFileBackend(OnFile, BackendContract):
    async def test_local_path(self, backend: Backend, tmp_path: Path) -> None:
        await backend.write("@s/n/n-1.0.0.tgz", b"x", replace=False)
        path = backend.local_path("@s/n/n-1.0.0.tgz")
        assert path == tmp_path / "store" / "@s" / "n" / "n-1.0.0.tgz"
        assert path.read_bytes() == b"x"

    async def test_hidden_entries_never_listed(self, backend: Backend, tmp_path: Path) -> None:
        root = tmp_path / "store"
        await backend.write("p/a", b"x", replace=False)
        async with backend.lock("p"):
            pass
        (root / "p" / ".tmp.1.abc.a").write_bytes(b"partial")
        (root / ".trash.1.abc" / "q").mkdir(parents=True)
        (root / ".trash.1.abc" / "q" / "f").write_bytes(b"x")
        assert [i.key for i in await backend.list_keys()] == ["p/a"]
        assert await backend.package_names() == ["p"]
        assert await backend.read_many(children_of=["p/"]) == {"p/a": b"x"}
        assert list(await backend.list_children("p/")) == ["p/a"]

    async def test_no_temp_files_left_after_writes(self, backend: Backend, tmp_path: Path) -> None:
        await backend.write("p/a", b"x", replace=False)
        with pytest.raises(AlreadyPublished):
            await backend.write("p/a", b"y", replace=False)
        await backend.write("p/b", b"x", replace=True)
        async with await backend.open_writer("p/c", replace=True) as w:
            await w.write(b"abc")
        names = sorted(p.name for p in (tmp_path / "store" / "p").iterdir())
        assert names == ["a", "b"]

    async def test_vanished_root_reads_none_and_write_recreates(self, backend: Backend, tmp_path: Path) -> None:
        await backend.write("p/a", b"x", replace=False)
        shutil.rmtree(tmp_path / "store")
        assert await backend.read("p/a") is None
        assert await backend.info("p/a") is None
        assert await backend.list_keys() == []
        assert await backend.package_names() == []
        assert await backend.delete_prefix("") == 0
        await backend.write("p/a", b"y", replace=False)
        assert await backend.read("p/a") == b"y"
        async with backend.lock("p"):  # the lock directory is recreated too
            pass

    async def test_writer_survives_directory_vanishing_before_commit(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        writer = await backend.open_writer("p/big", replace=True)
        await writer.write(b"a" * 300_000)  # flushed to the temp file
        shutil.rmtree(tmp_path / "store")
        await writer.write(b"b" * 10)
        await writer.commit()
        assert await backend.read("p/big") == b"a" * 300_000 + b"b" * 10
        assert [p.name for p in (tmp_path / "store" / "p").iterdir()] == ["big"]

    async def test_delete_prunes_empty_directories(self, backend: Backend, tmp_path: Path) -> None:
        await backend.write("@s/n/versions/1.json", b"x", replace=False)
        await backend.delete("@s/n/versions/1.json")
        assert not (tmp_path / "store" / "@s").exists()

    async def test_enospc_becomes_storage_full(
        self, backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(os, "fsync", full)
        with pytest.raises(StorageFull) as caught:
            await backend.write("p/a", b"x", replace=False)
        assert isinstance(caught.value.__cause__, OSError)
        monkeypatch.undo()
        assert await backend.read("p/a") is None
        assert list((tmp_path / "store" / "p").iterdir()) == []

    async def test_other_os_errors_become_storage_error(self, backend: Backend, tmp_path: Path) -> None:
        await backend.write("p/a", b"x", replace=False)
        with pytest.raises(StorageError) as caught:
            await backend.write("p/a/b", b"x", replace=False)  # "p/a" is a file
        assert not isinstance(caught.value, StorageFull)
        assert isinstance(caught.value.__cause__, OSError)

    async def test_cross_instance_lock(self, tmp_path: Path) -> None:
        # Two backends on one root stand for two worker processes: the flock
        # (not the asyncio lock) must exclude them.
        a, b = FileBackend(tmp_path / "s"), FileBackend(tmp_path / "s")
        await a.recover()
        async with a.lock("p"):
            waiter = asyncio.create_task(_enter(b, "p"))
            await asyncio.sleep(0.1)
            assert not waiter.done()
        await asyncio.wait_for(waiter, timeout=5)

    async def test_cancelled_cross_instance_wait_does_not_leak_the_lock(self, tmp_path: Path) -> None:
        a, b = FileBackend(tmp_path / "s"), FileBackend(tmp_path / "s")
        async with a.lock("p"):
            waiter = asyncio.create_task(_enter(b, "p"))
            await asyncio.sleep(0.1)  # b now blocks in its flock thread
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        # b's thread gets the lock after a lets go, sees nobody waits, gives it back.
        await asyncio.wait_for(_enter(a, "p"), timeout=5)
        await asyncio.wait_for(_enter(b, "p"), timeout=5)


class TestMemoryBackend(OnMemory, BackendContract):
    async def test_no_local_path(self, backend: Backend) -> None:
        await backend.write("p/a", b"x", replace=False)
        assert backend.local_path("p/a") is None


# --- layers


class LayerContract:
    """What both layers do alike."""

    @pytest.fixture
    def layer(self, backend: Backend) -> PublishedLayer | CacheLayer:
        raise NotImplementedError

    async def test_put_get(self, layer: PublishedLayer | CacheLayer) -> None:
        await layer.put("p/p-1.0.0.tgz", b"tgz")
        assert await layer.get("p/p-1.0.0.tgz") == b"tgz"
        assert await layer.get("p/missing") is None
        info = await layer.info("p/p-1.0.0.tgz")
        assert info is not None and info.size == 3

    async def test_keys_and_names(self, layer: PublishedLayer | CacheLayer) -> None:
        await layer.put("@s/n/a", b"1")
        await layer.put("m/b", b"22")
        assert [i.key for i in await layer.keys()] == ["@s/n/a", "m/b"]
        assert await layer.names() == ["@s/n", "m"]

    async def test_get_many(self, layer: PublishedLayer | CacheLayer) -> None:
        await layer.put("p/x", b"1")
        await layer.put("p/d/y", b"2")
        assert await layer.get_many(["p/x", "p/z"], children_of=["p/d/"]) == {"p/x": b"1", "p/d/y": b"2"}

    async def test_streaming(self, layer: PublishedLayer | CacheLayer) -> None:
        async with await layer.open_writer("p/s") as writer:
            await writer.write(b"ab")
            await writer.write(b"cd")
            await writer.commit()
        assert await layer.get("p/s") == b"abcd"


class PublishedLayerContract(LayerContract):
    @pytest.fixture
    def layer(self, backend: Backend) -> PublishedLayer:
        return PublishedLayer(backend)

    async def test_write_once(self, layer: PublishedLayer) -> None:
        await layer.put("p/versions/1.0.0.json", b"original")
        with pytest.raises(AlreadyPublished):
            await layer.put("p/versions/1.0.0.json", b"evil")
        with pytest.raises(AlreadyPublished):
            async with await layer.open_writer("p/versions/1.0.0.json") as writer:
                await writer.write(b"evil")
                await writer.commit()
        assert await layer.get("p/versions/1.0.0.json") == b"original"

    def test_no_delete_api(self, layer: PublishedLayer) -> None:
        for attr in ("delete", "evict", "evict_package", "wipe", "gc", "delete_prefix", "replace"):
            assert not hasattr(layer, attr)

    async def test_meta_only_inside_transaction(self, layer: PublishedLayer) -> None:
        with pytest.raises(InvalidInput):
            await layer.put("p/package-meta.json", b"{}")
        async with layer.transaction("p") as txn:  # type: ignore[arg-type]
            await txn.replace_meta(b'{"rev": 1}')
            await txn.replace_meta(b'{"rev": 2}')
        assert await layer.get("p/package-meta.json") == b'{"rev": 2}'
        with pytest.raises(StorageError):
            await txn.replace_meta(b"{}")  # the transaction has ended

    async def test_transaction_confined_to_its_package(self, layer: PublishedLayer) -> None:
        await layer.put("q/q-1.0.0.tgz", b"q")
        async with layer.transaction("p") as txn:  # type: ignore[arg-type]
            with pytest.raises(InvalidInput):
                await txn.commit_version(("q/q-1.0.0.tgz", b"x"), ("p/versions/1.0.0.json", b"{}"), b"{}")
            with pytest.raises(InvalidInput):
                await txn.remove_orphan("q/q-1.0.0.tgz")
        assert await layer.get("q/q-1.0.0.tgz") == b"q"

    async def test_commit_version_writes_tarball_version_and_meta(self, layer: PublishedLayer) -> None:
        await layer.put("p/p-1.0.0.tgz", b"torn publish")  # an orphan: no version file
        async with layer.transaction("p") as txn:  # type: ignore[arg-type]
            await txn.commit_version(("p/p-1.0.0.tgz", b"good"), ("p/versions/1.0.0.json", b"v1"), b'{"rev": 1}')
        assert await layer.get("p/p-1.0.0.tgz") == b"good"
        assert await layer.get("p/versions/1.0.0.json") == b"v1"
        assert await layer.get("p/package-meta.json") == b'{"rev": 1}'

    async def test_commit_version_without_meta_leaves_the_metadata_alone(self, layer: PublishedLayer) -> None:
        async with layer.transaction("p") as txn:  # type: ignore[arg-type]
            await txn.replace_meta(b'{"rev": 1}')
            await txn.commit_version(("p/p-2.0.0.tgz", b"t2"), ("p/versions/2.0.0.json", b"v2"), None)
        assert await layer.get("p/p-2.0.0.tgz") == b"t2"
        assert await layer.get("p/versions/2.0.0.json") == b"v2"
        assert await layer.get("p/package-meta.json") == b'{"rev": 1}'

    async def test_commit_version_stops_at_a_taken_version_file(self, layer: PublishedLayer) -> None:
        await layer.put("p/versions/1.0.0.json", b"original")
        async with layer.transaction("p") as txn:  # type: ignore[arg-type]
            with pytest.raises(AlreadyPublished):
                await txn.commit_version(("p/p-1.0.0.tgz", b"t"), ("p/versions/1.0.0.json", b"evil"), b"{}")
            with pytest.raises(InvalidInput):  # the metadata goes only where commit_version puts it
                await txn.commit_version(("p/package-meta.json", b"{}"), ("p/versions/2.0.0.json", b"v"), b"{}")
        assert await layer.get("p/versions/1.0.0.json") == b"original"
        assert await layer.get("p/package-meta.json") is None  # nothing after the failed write
        assert await layer.get("p/versions/2.0.0.json") is None

    async def test_transaction_orphan_repair(self, layer: PublishedLayer) -> None:
        await layer.put("p/p-1.0.0.tgz", b"torn publish")
        async with layer.transaction("p") as txn:  # type: ignore[arg-type]
            assert await txn.remove_orphan("p/p-1.0.0.tgz") is True
        assert await layer.get("p/p-1.0.0.tgz") is None

    async def test_transactions_exclude_each_other(self, layer: PublishedLayer) -> None:
        order: list[str] = []

        async def txn(tag: str) -> None:
            async with layer.transaction("p"):  # type: ignore[arg-type]
                order.append(f"{tag}+")
                await asyncio.sleep(0.01)
                order.append(f"{tag}-")

        await asyncio.gather(txn("a"), txn("b"))
        assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])


class CacheLayerContract(LayerContract):
    @pytest.fixture
    def layer(self, backend: Backend) -> CacheLayer:
        return CacheLayer(backend)

    async def test_put_replaces(self, layer: CacheLayer) -> None:
        await layer.put("p/packument.json", b"old")
        await layer.put("p/packument.json", b"new")
        assert await layer.get("p/packument.json") == b"new"

    async def test_evict(self, layer: CacheLayer) -> None:
        await layer.put("p/a", b"1")
        assert await layer.evict("p/a") is True
        assert await layer.evict("p/a") is False
        assert await layer.get("p/a") is None

    async def test_evict_package(self, layer: CacheLayer) -> None:
        for key in ["@s/p/a", "@s/p/b", "@s/pp/c", "x/d"]:
            await layer.put(key, b"1")
        assert await layer.evict_package("@s/p") == 2  # type: ignore[arg-type]
        assert [i.key for i in await layer.keys()] == ["@s/pp/c", "x/d"]

    async def test_wipe(self, layer: CacheLayer) -> None:
        for key in ["@s/p/a", "x/d"]:
            await layer.put(key, b"123")
        report = await layer.wipe()
        assert (report.entries, report.bytes) == (2, 6)
        assert await layer.keys() == []

    async def test_access_tracked_in_memory(self, layer: CacheLayer) -> None:
        await layer.put("p/a", b"1")
        first = layer.last_access("p/a")
        assert first is not None
        await asyncio.sleep(0.01)
        await layer.get("p/a")
        second = layer.last_access("p/a")
        assert second is not None and second >= first


class TestPublishedOnFile(OnFile, PublishedLayerContract):
    pass


class TestPublishedOnMemory(OnMemory, PublishedLayerContract):
    pass


class TestCacheOnFile(OnFile, CacheLayerContract):
    pass


class TestCacheOnMemory(OnMemory, CacheLayerContract):
    pass


# --- the union


class TestLayeredStore:
    async def test_published_shadows_cache(self) -> None:
        store = LayeredStore(PublishedLayer(MemoryBackend()), CacheLayer(MemoryBackend()))
        await store.cache.put("p/p-1.0.0.tgz", b"upstream")
        hit = await store.lookup("p/p-1.0.0.tgz")
        assert hit is not None and (hit.data, hit.layer) == (b"upstream", "cache")
        await store.published.put("p/p-1.0.0.tgz", b"ours")
        hit = await store.lookup("p/p-1.0.0.tgz")
        assert hit is not None and (hit.data, hit.layer) == (b"ours", "published")
        location = await store.locate("p/p-1.0.0.tgz")
        assert location is not None and (location.layer, location.size, location.path) == ("published", 4, None)
        location = await store.locate("p/p-1.0.0.tgz", published=False)
        assert location is not None and location.layer == "cache"
        assert await store.lookup("p/none") is None
        assert store.stats.misses == 1

    async def test_locate_gives_local_paths(self, tmp_path: Path) -> None:
        store = await LayeredStore.open_directories(tmp_path / "pub", tmp_path / "cache")
        await store.cache.put("p/p-1.0.0.tgz", b"upstream")
        location = await store.locate("p/p-1.0.0.tgz")
        assert location is not None and location.path == tmp_path / "cache" / "p" / "p-1.0.0.tgz"

    @pytest.mark.parametrize(
        ("published", "cache"), [("s", "s"), ("s", "s/cache"), ("s/pub", "s"), ("s/./pub", "s/pub/")]
    )
    async def test_roots_must_not_nest(self, tmp_path: Path, published: str, cache: str) -> None:
        with pytest.raises(InvalidInput):
            await LayeredStore.open_directories(tmp_path / published, tmp_path / cache)

    def test_shared_backend_refused(self) -> None:
        backend = MemoryBackend()
        with pytest.raises(InvalidInput):
            LayeredStore(PublishedLayer(backend), CacheLayer(backend))

    async def test_cache_wipe_leaves_published_alone(self, tmp_path: Path) -> None:
        store = await LayeredStore.open_directories(tmp_path / "pub", tmp_path / "cache")
        await store.published.put("p/p-1.0.0.tgz", b"ours")
        await store.cache.put("p/p-1.0.0.tgz", b"theirs")
        await store.cache.wipe()
        await store.cache.gc(max_bytes=0, max_age=0)
        assert await store.cache.evict_package("p") == 0  # type: ignore[arg-type]
        hit = await store.lookup("p/p-1.0.0.tgz")
        assert hit is not None and (hit.data, hit.layer) == (b"ours", "published")

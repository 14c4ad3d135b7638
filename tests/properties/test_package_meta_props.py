"""Stateful property test: a package's dist-tags and rev, whether a publish
rewrote its metadata document or left its tags in the version file.

Rules publish (with tags, with and without a default ``latest``), set and
remove dist-tags, unpublish, and reopen the store with cold caches. After
every step:

1. a fresh reader (a new PackageStore on the same storage: nothing cached)
   sees exactly the fragment the writer's own reads give;
2. its dist-tags are those of a model of the operations, normalised as the
   module docstring of ``overlaystore.packages`` says (tags on live versions
   only, a dangling ``latest`` moved to the highest live version);
3. its rev counts the writes that changed the package;
4. the metadata document is never more than ``fold_after`` publishes behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import orjson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from overlaystore._types import PackageName
from overlaystore.cache import CacheLayer
from overlaystore.errors import AlreadyPublished, InvalidInput, NotFound
from overlaystore.layered import LayeredStore
from overlaystore.memory import MemoryBackend
from overlaystore.packages import PackageStore
from overlaystore.published import PublishedLayer, meta_key
from overlaystore.versions import highest, version_key

_T = TypeVar("_T")

NAME = PackageName("@acme/tagged")
VERSIONS = ("1.0.0", "1.1.0", "2.0.0-rc.1", "2.0.0", "3.0.0-beta.1")
TAGS = ("latest", "beta", "next")
FOLD_AFTER = 3
USER = {"name": "alice", "email": "alice@example.test"}


class PackageMetaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.layered = LayeredStore(PublishedLayer(MemoryBackend()), CacheLayer(MemoryBackend()))
        self.store = self.open()
        # the model
        self.live: set[str] = set()
        self.gone: set[str] = set()
        self.tags: dict[str, str] = {}
        self.rev = 0

    def open(self) -> PackageStore:
        return PackageStore(self.layered, fold_after=FOLD_AFTER)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()

    def normalise(self) -> None:
        dangling = "latest" in self.tags and self.tags["latest"] not in self.live
        self.tags = {t: v for t, v in self.tags.items() if v in self.live}
        if dangling and self.live:
            self.tags["latest"] = highest(self.live) or max(self.live, key=version_key)

    @rule(version=st.sampled_from(VERSIONS),
          tags=st.dictionaries(st.sampled_from(TAGS), st.sampled_from(VERSIONS), max_size=2),
          default_latest=st.booleans())
    def publish(self, version: str, tags: dict[str, str], default_latest: bool) -> None:
        manifest = {"name": NAME, "version": version, "_npmUser": USER}
        try:
            self.run(self.store.publish(NAME, version, manifest, version.encode(), tags=tags, user=USER,
                                        default_latest=default_latest))
        except AlreadyPublished:
            assert version in self.live | self.gone
            return
        assert version not in self.live | self.gone
        self.live.add(version)
        self.tags.update({t: v for t, v in tags.items() if v in self.live})
        if default_latest:
            self.tags.setdefault("latest", version)
        self.rev += 1
        self.normalise()

    @precondition(lambda self: bool(self.live))
    @rule(tag=st.sampled_from(TAGS), version=st.sampled_from(VERSIONS))
    def set_tag(self, tag: str, version: str) -> None:
        try:
            self.run(self.store.set_dist_tag(NAME, tag, version))
        except NotFound:
            assert version not in self.live
            return
        if self.tags.get(tag) != version:
            self.rev += 1
        self.tags[tag] = version

    @precondition(lambda self: bool(self.live))
    @rule(tag=st.sampled_from(TAGS))
    def remove_tag(self, tag: str) -> None:
        try:
            self.run(self.store.remove_dist_tag(NAME, tag))
        except InvalidInput:
            assert tag == "latest"
            return
        except NotFound:
            assert tag not in self.tags
            return
        del self.tags[tag]
        self.rev += 1

    @precondition(lambda self: bool(self.live))
    @rule(version=st.sampled_from(VERSIONS))
    def unpublish(self, version: str) -> None:
        self.run(self.store.unpublish(NAME, [version]))
        if version in self.live:
            self.live.discard(version)
            self.gone.add(version)
            self.rev += 1
            self.normalise()

    @rule()
    def reopen(self) -> None:
        self.store = self.open()

    @invariant()
    def a_fresh_reader_sees_the_model(self) -> None:
        fresh = self.run(self.open().fragment(NAME))
        if not self.live | self.gone:
            assert fresh is None
            return
        assert fresh is not None
        assert fresh == self.run(self.store.fragment(NAME))
        assert fresh.dist_tags == self.tags
        assert set(fresh.versions) == self.live and set(fresh.unpublished) == self.gone
        assert fresh.rev == self.rev

    @invariant()
    def the_metadata_is_at_most_fold_after_publishes_behind(self) -> None:
        raw = self.run(self.layered.published.get(meta_key(NAME)))
        if raw is None:
            assert not self.live | self.gone
            return
        assert self.rev - orjson.loads(raw)["rev"] <= FOLD_AFTER


PackageMetaMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestPackageMeta = PackageMetaMachine.TestCase

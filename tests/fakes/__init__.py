"""Test doubles that run for real on 127.0.0.1 (never the internet)."""

from .upstream import FakePackage, FakeUpstream, RecordedRequest, make_tarball

__all__ = ["FakePackage", "FakeUpstream", "RecordedRequest", "make_tarball"]

"""Decoding and checking an npm publish body, before anything is written.

``npm publish`` (and pnpm, yarn) PUT the whole package document with one
version and its tarball as a base64 ``_attachments`` entry. Everything a
client could get wrong is checked here (names, version, attachment name,
base64, length, sha512 integrity and sha1 shasum, tags) and reported as a
400 with a message saying what is wrong; only then does the store write.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from overlaystore._types import JSONObject, PackageName
from overlaystore.errors import IntegrityMismatch, InvalidInput, InvalidVersion
from overlaystore.names import validate_new_name
from overlaystore.versions import parse_version

_INSTALL_SCRIPTS = ("preinstall", "install", "postinstall")
_PROTOTYPE_KEYS = frozenset({"__proto__", "constructor", "prototype"})


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A checked publish: one version, its manifest and its tarball bytes."""

    name: PackageName
    version: str
    manifest: JSONObject
    tarball: bytes
    tags: Mapping[str, str]


def is_publish(body: Mapping[str, Any]) -> bool:
    """A PUT is a publish iff it carries a ``.tgz`` attachment."""
    attachments = body.get("_attachments")
    return isinstance(attachments, dict) and any(
        isinstance(key, str) and key.endswith(".tgz") for key in attachments
    )


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidInput(message)


def _decode_attachment(key: str, attachment: Any) -> bytes:
    _require(isinstance(attachment, dict), f"attachment {key!r} must be an object")
    data = attachment.get("data")
    _require(isinstance(data, str) and bool(data), f"attachment {key!r} has no base64 data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(f"attachment {key!r} is not valid base64") from exc
    length = attachment.get("length")
    if length is not None:
        _require(
            isinstance(length, int) and not isinstance(length, bool),
            f"attachment {key!r}: length must be an integer",
        )
        if length != len(raw):
            raise IntegrityMismatch(
                f"attachment {key!r}: declared length {length} but {len(raw)} bytes were sent"
            )
    return raw


def check_integrity(tarball: bytes, dist: Mapping[str, Any]) -> None:
    """Raise IntegrityMismatch unless the tarball matches ``dist.integrity``
    (every sha512/sha1 entry of the SRI string) and ``dist.shasum``."""
    integrity = dist.get("integrity")
    shasum = dist.get("shasum")
    _require(
        isinstance(integrity, str) or isinstance(shasum, str),
        "dist.integrity or dist.shasum is required",
    )
    # A non-string integrity would otherwise be stored unchecked (and break installs).
    _require(integrity is None or isinstance(integrity, str), "dist.integrity must be a string")
    if isinstance(integrity, str):
        checked = 0
        for entry in integrity.split():
            algo, _, digest = entry.partition("-")
            algo = algo.lower()
            if algo not in ("sha512", "sha384", "sha256", "sha1"):
                continue
            actual = base64.b64encode(hashlib.new(algo, tarball).digest()).decode()
            if actual != digest.split("?")[0]:
                raise IntegrityMismatch(
                    f"integrity mismatch: the tarball's {algo} is {algo}-{actual}, "
                    f"the manifest says {entry}"
                )
            checked += 1
        _require(checked > 0, f"dist.integrity {integrity!r} names no supported hash")
    if shasum is not None:
        _require(isinstance(shasum, str), "dist.shasum must be a string")
        actual_sha1 = hashlib.sha1(tarball).hexdigest()
        if actual_sha1 != str(shasum).lower():
            raise IntegrityMismatch(
                f"shasum mismatch: the tarball's sha1 is {actual_sha1}, the manifest says {shasum}"
            )


#: Bounds on what :func:`tarball_members` reads: a few MiB of gzip can hold
#: millions of empty entries (seconds of CPU and hundreds of MiB per million)
#: or gigabytes of zeros. Real packages stay far below both.
MAX_TARBALL_ENTRIES = 100_000
MAX_UNPACKED_BYTES = 1 << 30


def tarball_members(tarball: bytes) -> set[str]:
    """Paths inside a package tarball (``package/`` prefix stripped);
    raises InvalidInput when it is not a gzipped tar, or one with more than
    :data:`MAX_TARBALL_ENTRIES` entries or :data:`MAX_UNPACKED_BYTES` of content
    (checked on each header, before its content is inflated)."""
    names: set[str] = set()
    unpacked = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
            while (member := archive.next()) is not None:
                unpacked += max(member.size, 0)
                if len(archive.members) > MAX_TARBALL_ENTRIES or unpacked > MAX_UNPACKED_BYTES:
                    raise InvalidInput(
                        f"the tarball unpacks to more than {MAX_TARBALL_ENTRIES} files or "
                        f"{MAX_UNPACKED_BYTES >> 20} MiB"
                    )
                names.add(member.name)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidInput("the attachment is not a gzipped tar archive") from exc
    return {n.split("/", 1)[1] if "/" in n else n for n in names}


def parse_publish(url_name: PackageName, body: Mapping[str, Any]) -> PublishRequest:
    """Check a publish body against the URL; returns what to store.

    The returned manifest is the client's version document, untouched except
    for fields the server owns (``_npmUser``, ``hasInstallScript``,
    ``_hasShrinkwrap`` are set by :func:`server_fields`).
    """
    name = validate_new_name(url_name)
    _require(body.get("name", name) == name, f"the body names {body.get('name')!r}, the URL {name!r}")
    _require(body.get("_id", name) == name, f"the body's _id {body.get('_id')!r} is not {name!r}")
    versions = body.get("versions")
    _require(isinstance(versions, dict) and len(versions) == 1, "a publish carries exactly one version")
    assert isinstance(versions, dict)
    ((raw_version, manifest),) = versions.items()
    version = parse_version(raw_version)
    _require(isinstance(manifest, dict), f"versions[{raw_version!r}] must be an object")
    _require(manifest.get("name") == name, f"versions[{version!r}].name must be {name!r}")
    _require(manifest.get("version") == version, f"versions[{version!r}].version must be {version!r}")
    dist = manifest.get("dist")
    _require(isinstance(dist, dict), f"versions[{version!r}].dist must be an object")

    attachments = body["_attachments"]
    tgz_keys = [k for k in attachments if isinstance(k, str) and k.endswith(".tgz")]
    _require(len(tgz_keys) == 1, "a publish carries exactly one .tgz attachment")
    key = tgz_keys[0]
    expected = {f"{name}-{version}.tgz", f"{name.rpartition('/')[2]}-{version}.tgz"}
    _require(key in expected, f"attachment {key!r} does not match {name}@{version}")
    for other in attachments:
        _require(
            other == key or (isinstance(other, str) and other == f"{name}-{version}.sigstore"),
            f"unexpected attachment {other!r}",
        )
    tarball = _decode_attachment(key, attachments[key])
    check_integrity(tarball, dist)

    tags_raw = body.get("dist-tags", {})
    _require(isinstance(tags_raw, dict), "dist-tags must be an object")
    tags: dict[str, str] = {}
    for tag, target in tags_raw.items():
        check_tag_name(tag)
        _require(target == version, f"dist-tag {tag!r} must point at the published version {version}")
        tags[tag] = version
    return PublishRequest(name, version, dict(manifest), tarball, tags)


def check_tag_name(tag: Any) -> str:
    """A dist-tag is a short string that is not itself a version."""
    _require(isinstance(tag, str) and 0 < len(tag) <= 128, "a dist-tag is a non-empty string")
    _require(
        tag.strip() == tag and all(c.isprintable() and c not in "/\\%" for c in tag),
        f"invalid dist-tag {tag!r}",
    )
    # Harmless here, but JavaScript clients that copy dist-tags with
    # Object.assign or obj[tag] = ... would set a prototype instead.
    _require(tag not in _PROTOTYPE_KEYS, f"invalid dist-tag {tag!r}")
    try:
        parse_version(tag.removeprefix("v"))
    except InvalidVersion:
        return tag
    raise InvalidInput(f"dist-tag {tag!r} looks like a version; tags must not be versions")


def server_fields(manifest: Mapping[str, Any], tarball_files: set[str], user: Mapping[str, str]) -> JSONObject:
    """The version manifest as stored: the client's, plus the fields the
    registry computes (who published, install scripts, shrinkwrap)."""
    out = dict(manifest)
    # Deprecation lives in the package metadata (npm deprecate), never in the
    # write-once manifest, where it could not be undone.
    out.pop("deprecated", None)
    out["_npmUser"] = dict(user)
    scripts = manifest.get("scripts")
    has_script = isinstance(scripts, dict) and any(s in scripts for s in _INSTALL_SCRIPTS)
    if has_script or "binding.gyp" in tarball_files:
        out["hasInstallScript"] = True
    out["_hasShrinkwrap"] = "npm-shrinkwrap.json" in tarball_files
    return out

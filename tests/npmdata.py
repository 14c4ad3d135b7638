"""Builders for npm data in tests: package tarballs and publish bodies shaped
exactly as npm 11 sends them (see the protocol notes, §5.1)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
from typing import Any


def make_tarball(name: str, version: str, extra_files: dict[str, bytes] | None = None,
                 manifest: dict[str, Any] | None = None) -> bytes:
    """A gzipped tar with ``package/package.json`` (and ``extra_files``)."""
    pkg = {"name": name, "version": version, **(manifest or {})}
    files = {"package.json": json.dumps(pkg).encode(), **(extra_files or {})}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.USTAR_FORMAT) as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(f"package/{path}")
            info.size = len(data)
            info.mtime = 499162500
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def publish_body(
    name: str,
    version: str,
    *,
    tarball: bytes | None = None,
    tags: dict[str, str] | None = None,
    manifest: dict[str, Any] | None = None,
    registry: str = "http://127.0.0.1:4873",
) -> dict[str, Any]:
    """The JSON body of ``npm publish`` for one version."""
    data = tarball if tarball is not None else make_tarball(name, version, manifest=manifest)
    filename = f"{name}-{version}.tgz"
    return {
        "_id": name,
        "name": name,
        "description": f"the {name} package",
        "dist-tags": tags if tags is not None else {"latest": version},
        "versions": {
            version: {
                "name": name,
                "version": version,
                "description": f"the {name} package",
                "readme": "ERROR: No README data found!",
                "_id": f"{name}@{version}",
                "_nodeVersion": "20.20.2",
                "_npmVersion": "11.19.1",
                **(manifest or {}),
                "dist": {
                    "integrity": integrity(data),
                    "shasum": hashlib.sha1(data).hexdigest(),
                    "tarball": f"{registry}/{name}/-/{filename}",
                },
            }
        },
        "access": None,
        "_attachments": {
            filename: {
                "content_type": "application/octet-stream",
                "data": base64.b64encode(data).decode(),
                "length": len(data),
            }
        },
    }

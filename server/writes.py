"""Every write to a package: publish, deprecate, star, unpublish, owners.

npm reuses ``PUT /<name>`` for publish, deprecate and star, and
``PUT /<name>/-rev/<rev>`` for unpublish and owner changes, always sending a
whole document. A body only ever changes what it is *for*: a stale or partial
document never rolls anything else back, and a missing ``versions`` never
means "delete everything" (see the protocol notes, §6 and §7).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from overlaystore._types import PackageName
from overlaystore.errors import InvalidInput, NotFound, StorageError
from overlaystore.fragment import PublishedFragment
from overlaystore.policy import ProxyMode

from .access import require_publish, require_user
from .auth import Identity
from .errors import Forbidden
from .keys import DOCUMENTS, POLICY, SOURCE, STORE
from .publish import is_publish, parse_publish, server_fields, tarball_members
from .request_info import package_name, read_json_object

log = logging.getLogger("overlaystore.server")


def _ok(status: int = 200, **extra: Any) -> web.Response:
    return web.json_response({"ok": True, **extra}, status=status)


async def published_fragment(
    request: web.Request, name: PackageName, only: str = "only published packages can be changed"
) -> PublishedFragment:
    """The published data of ``name``; NotFound for names not published here
    (the message ends with ``only``: why that matters to the caller)."""
    fragment = await request.app[STORE].fragment(name)
    if fragment is None:
        raise NotFound(f"{name} is not published on this registry; {only}")
    return fragment


async def put_package(request: web.Request) -> web.Response:
    """``PUT /<name>``: a publish when it carries a tarball, else deprecate/star."""
    name = package_name(request)
    who = await require_user(request)
    body = await read_json_object(request)
    if is_publish(body):
        return await _publish(request, name, body, who)
    return await _update_versions_and_stars(request, name, body)


async def _publish(request: web.Request, name: PackageName, body: Mapping[str, Any], who: Identity) -> web.Response:
    store = request.app[STORE]
    checked = parse_publish(name, body)

    async def authorize(fragment: PublishedFragment | None) -> None:
        # Under the package lock: the rights checked are the rights the write meets.
        await require_publish(request, name, fragment)
        if fragment is None:
            await _check_first_publish(request, name)

    files = await asyncio.to_thread(tarball_members, checked.tarball)
    user = {"name": who.name, "email": who.email or ""}
    manifest = server_fields(checked.manifest, files, user)
    # An overlay must not take `latest` from the upstream just by adding a
    # patched version: only an explicit `latest` tag (npm's default) moves it.
    overlaid = request.app[POLICY].rule_for(name).proxy is ProxyMode.OVERLAY
    try:
        published = await store.publish(
            name, checked.version, manifest, checked.tarball,
            tags=checked.tags, user=user, default_latest=not overlaid, authorize=authorize,
        )
    except StorageError as exc:
        # The version file is the commit point, and it records the tags the
        # publish set; only the metadata document is written after it (on a
        # first publish, and now and then to fold tags in). If only that
        # failed (a full disk), the version is published with its tags: a
        # 201, or the client would retry into a 409 without learning why.
        after = await store.fragment(name)
        stored = after.versions.get(checked.version) if after is not None else None
        if after is None or stored is None or stored.get("dist") != manifest.get("dist"):
            raise
        log.warning("published %s@%s by %s, but its package metadata could not be saved (%s); "
                    "the next change to the package saves it", name, checked.version, who.name, exc)
        published = after
    else:
        log.info("published %s@%s by %s", name, checked.version, who.name)
    return _ok(201, id=name, rev=await request.app[DOCUMENTS].revision(name, published))


async def _check_first_publish(request: web.Request, name: PackageName) -> None:
    """A first publish of a name the upstream has is refused unless an
    overlay rule covers it (no dependency confusion by accident)."""
    policy = request.app[POLICY]
    if policy.rule_for(name).proxy is ProxyMode.NEVER:
        return
    exists = await request.app[SOURCE].exists_upstream(name)
    policy.check_first_publish(name, exists_upstream=exists)


async def _update_versions_and_stars(
    request: web.Request, name: PackageName, body: Mapping[str, Any]
) -> web.Response:
    store = request.app[STORE]
    fragment = await published_fragment(request, name)
    versions = body.get("versions")
    if versions is not None:
        if not isinstance(versions, dict):
            raise InvalidInput("versions must be an object")
        changes: dict[str, str] = {}
        for version, manifest in versions.items():
            if version not in fragment.versions or not isinstance(manifest, dict):
                continue
            if "deprecated" not in manifest:
                continue  # absent is not "undeprecate": the document may be stale
            message = manifest["deprecated"]
            if not isinstance(message, str):
                raise InvalidInput(f"versions[{version!r}].deprecated must be a string")
            if fragment.deprecations.get(version, "") != message:
                changes[version] = message
        if changes:
            await require_publish(request, name, fragment)
            await store.set_deprecations(name, changes)
    users = body.get("users")
    if isinstance(users, dict):
        who = await require_user(request)
        starred = bool(users.get(who.name))
        if starred != bool(fragment.users.get(who.name)):
            await store.set_star(name, who.name, starred)
    return _ok()


async def put_package_rev(request: web.Request) -> web.Response:
    """``PUT /<name>/-rev/<rev>``: unpublish versions and/or change owners."""
    name = package_name(request)
    store = request.app[STORE]
    fragment = await published_fragment(request, name)
    await require_publish(request, name, fragment)
    body = await read_json_object(request)
    versions = body.get("versions")
    if versions is not None:
        if not isinstance(versions, dict):
            raise InvalidInput("versions must be an object")
        removed = [v for v in fragment.versions if v not in versions]
        if removed:
            if len(removed) == len(fragment.versions):
                # Removing every version is the whole-package DELETE's job.
                raise InvalidInput("removing every version: use npm unpublish <name> --force")
            await store.unpublish(name, removed)
            log.info("unpublished %s@%s", name, ",".join(removed))
    maintainers = body.get("maintainers")
    if maintainers is not None:
        await store.set_maintainers(name, _check_maintainers(maintainers))
    return _ok()


def _check_maintainers(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise InvalidInput("maintainers must be a non-empty list; a package needs an owner")
    out: list[dict[str, str]] = []
    for entry in value:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) or not entry["name"]:
            raise InvalidInput("each maintainer is an object with a name")
        email = entry.get("email")
        out.append({"name": entry["name"], "email": email if isinstance(email, str) else ""})
    return out


async def delete_package(request: web.Request) -> web.Response:
    """``DELETE /<name>/-rev/<rev>``: unpublish the whole package (tombstones;
    the files stay until an operator purges them)."""
    name = package_name(request)
    fragment = await published_fragment(request, name)
    await require_publish(request, name, fragment)
    await request.app[STORE].unpublish_all(name)
    log.info("unpublished all of %s", name)
    return _ok()


async def delete_tarball(request: web.Request) -> web.Response:
    """``DELETE /<name>/-/<file>/-rev/<rev>``, which npm sends after removing a
    version: the tarball stays on disk as part of the tombstone, and is no
    longer served. Deleting the tarball of a live version is refused."""
    name = package_name(request)
    fragment = await published_fragment(request, name)
    await require_publish(request, name, fragment)
    filename = request.match_info["filename"]
    basename = name.rpartition("/")[2]
    live = {f"{basename}-{v}.tgz" for v in fragment.versions}
    if filename in live:
        raise Forbidden(f"{filename} belongs to a published version; unpublish the version first")
    return _ok()

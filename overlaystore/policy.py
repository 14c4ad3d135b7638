"""Whose name is it: the private / proxied / overlaid decision.

Ordered package-pattern rules (first match wins, as in Verdaccio's
``packages:`` section) say who may read and publish a name and whether the
upstream may be consulted for it. The library only *decides*; the server
enforces the decision.

* **private**: published versions exist and the rule does not say
  ``overlay``. Upstream is never consulted for the name.
* **proxied**: nothing is published under the name: served from the cache
  and the upstream (unless the rule says ``never``).
* **overlaid**: the rule says ``overlay``: the upstream packument with the
  published versions laid over it.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from functools import lru_cache

from ._types import PackageName
from .errors import PolicyRefused


class ProxyMode(enum.Enum):
    """What a rule allows the upstream to contribute to a name."""

    ALLOW = "allow"  # proxied while nothing is published; private once it is
    NEVER = "never"  # never ask upstream (private scopes)
    OVERLAY = "overlay"  # upstream packument with published versions laid over it


class Provenance(enum.Enum):
    """Which stores make up the packument of a name."""

    PRIVATE = "private"
    PROXIED = "proxied"
    OVERLAID = "overlaid"


#: Principals understood in ``access`` / ``publish`` lists, besides user names.
ALL = "$all"
AUTHENTICATED = "$authenticated"
ANONYMOUS = "$anonymous"


@dataclass(frozen=True, slots=True)
class PackageRule:
    """One ``[[packages]]`` rule. ``pattern`` is a glob: ``*`` stays within a
    path segment, ``**`` matches anything (``@acme/*``, ``lodash``, ``**``)."""

    pattern: str
    access: tuple[str, ...] = (ALL,)
    publish: tuple[str, ...] = (AUTHENTICATED,)
    proxy: ProxyMode = ProxyMode.ALLOW

    def matches(self, name: str) -> bool:
        return _compile(self.pattern).fullmatch(name) is not None


DEFAULT_RULE = PackageRule(pattern="**")


@lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


@dataclass(frozen=True, slots=True)
class NamePolicy:
    """Ordered rules; the first whose pattern matches a name applies."""

    rules: tuple[PackageRule, ...] = (DEFAULT_RULE,)

    def rule_for(self, name: PackageName) -> PackageRule:
        """The first matching rule, or :data:`DEFAULT_RULE`."""
        for rule in self.rules:
            if rule.matches(name):
                return rule
        return DEFAULT_RULE

    def classify(self, name: PackageName, *, has_published: bool) -> Provenance:
        """Decide how the packument of ``name`` is made."""
        rule = self.rule_for(name)
        if rule.proxy is ProxyMode.OVERLAY:
            return Provenance.OVERLAID if has_published else Provenance.PROXIED
        if has_published or rule.proxy is ProxyMode.NEVER:
            return Provenance.PRIVATE
        return Provenance.PROXIED

    def may_consult_upstream(self, name: PackageName, *, has_published: bool) -> bool:
        """Whether the upstream may be asked anything about ``name``."""
        return self.classify(name, has_published=has_published) is not Provenance.PRIVATE

    def check_first_publish(self, name: PackageName, *, exists_upstream: bool) -> None:
        """Refuse to start publishing a name that the upstream already has,
        unless an overlay rule covers it. Raises :class:`PolicyRefused` with the
        rule to add."""
        if not exists_upstream or self.rule_for(name).proxy is ProxyMode.OVERLAY:
            return
        raise PolicyRefused(
            f"{name} exists on the upstream registry; publishing it here would mix "
            f"a private package with a public one. To publish your own versions over "
            f"the upstream package, add an overlay rule to the config: "
            f'[[packages]] pattern = "{name}" proxy = "overlay"'
        )


__all__ = [
    "ALL",
    "ANONYMOUS",
    "AUTHENTICATED",
    "DEFAULT_RULE",
    "NamePolicy",
    "PackageRule",
    "Provenance",
    "ProxyMode",
]

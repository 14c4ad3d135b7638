"""Users and their password hashes, in an htpasswd file.

The format is Verdaccio's, so an existing Verdaccio ``htpasswd`` works as is::

    alice:$2y$10$...:autocreated 2026-11-25T17:02:17.439Z email=alice@example.com
    bob:{SHA}fEqNCco3Yq9h5ZUglD3CZJT4lBs=

* Field two is the hash. bcrypt (``$2a$``/``$2b$``/``$2y$``: the same
  algorithm) and the legacy ``{SHA}`` form are verified; anything written is
  bcrypt. Other hash formats (crypt, ``$apr1$``) are kept on rewrite but never
  verify: such users reset their password with ``overlaystore user passwd``.
* Field three is free text that Verdaccio ignores; we keep it and append
  ``email=<address>`` to it, so the file stays the single record of a user.
* Lines we cannot parse are kept verbatim, so rewriting never loses data an
  operator put there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass

import bcrypt

from overlaystore.errors import InvalidInput

#: npm user names are URL path segments, htpasswd fields and principal names:
#: no ":", no whitespace, no leading "$" (that is a principal such as $all).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~-]{0,99}")
_EMAIL = re.compile(r"[^\s:@]+@[^\s:@]+")
_BCRYPT_MAX_BYTES = 72


def validate_user_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidInput(
            f"invalid user name {name!r}: use 1-100 letters, digits, '.', '_', '~' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_email(email: str | None) -> str | None:
    if email is None or email == "":
        return None
    if not isinstance(email, str) or not _EMAIL.fullmatch(email) or len(email) > 254:
        raise InvalidInput(f"invalid email address {email!r}")
    return email


def validate_password(password: str) -> bytes:
    """The password as bcrypt input; bcrypt ignores bytes past 72, so refuse them."""
    if not isinstance(password, str) or not password:
        raise InvalidInput("the password must not be empty")
    data = password.encode("utf-8")
    if len(data) > _BCRYPT_MAX_BYTES:
        raise InvalidInput(f"the password is too long (at most {_BCRYPT_MAX_BYTES} bytes in UTF-8)")
    return data


def hash_password(password: str, *, rounds: int) -> str:
    """A fresh bcrypt hash (``$2b$``). Slow on purpose: run it in a thread."""
    return bcrypt.hashpw(validate_password(password), bcrypt.gensalt(rounds=rounds)).decode("ascii")


def is_bcrypt(hashed: str) -> bool:
    return hashed.startswith(("$2a$", "$2b$", "$2y$"))


def verify_password(password: str, hashed: str) -> bool:
    """Whether ``password`` matches ``hashed`` (constant time for the forms we
    verify; False for forms we do not). Slow for bcrypt: run it in a thread."""
    data = password.encode("utf-8")
    if is_bcrypt(hashed):
        if len(data) > _BCRYPT_MAX_BYTES:
            return False
        try:
            # $2y$ (PHP, Verdaccio) is $2b$ under another name.
            return bcrypt.checkpw(data, ("$2b$" + hashed[4:]).encode("ascii"))
        except ValueError:
            return False
    if hashed.startswith("{SHA}"):
        digest = base64.b64encode(hashlib.sha1(data).digest()).decode("ascii")  # noqa: S324 - legacy format
        return hmac.compare_digest(digest, hashed[5:])
    return False


@dataclass(frozen=True, slots=True)
class UserEntry:
    name: str
    hash: str
    #: Field three without our ``email=`` item (e.g. Verdaccio's "autocreated <date>").
    comment: str = ""
    email: str | None = None

    def line(self) -> str:
        extra = " ".join(part for part in (self.comment, f"email={self.email}" if self.email else "") if part)
        return f"{self.name}:{self.hash}:{extra}" if extra else f"{self.name}:{self.hash}"


@dataclass(frozen=True, slots=True)
class Htpasswd:
    """A parsed htpasswd file: users by name, plus lines kept verbatim."""

    users: dict[str, UserEntry]
    #: (position, text) of lines that are not user entries (comments, junk).
    other: tuple[tuple[int, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> Htpasswd:
        users: dict[str, UserEntry] = {}
        other: list[tuple[int, str]] = []
        for index, line in enumerate(text.splitlines()):
            name, sep, rest = line.partition(":")
            if not sep or not name or line.startswith("#") or name in users:
                if line.strip():
                    other.append((index, line))
                continue
            hashed, _, extra = rest.partition(":")
            comment, email = [], None
            for word in extra.split():
                if word.startswith("email="):
                    email = word[len("email="):] or None
                else:
                    comment.append(word)
            users[name] = UserEntry(name=name, hash=hashed, comment=" ".join(comment), email=email)
        return cls(users=users, other=tuple(other))

    def render(self) -> bytes:
        lines = [entry.line() for entry in self.users.values()]
        for position, text in self.other:
            lines.insert(min(position, len(lines)), text)
        return ("\n".join(lines) + "\n").encode("utf-8") if lines else b""

    def with_user(self, entry: UserEntry) -> Htpasswd:
        return Htpasswd(users={**self.users, entry.name: entry}, other=self.other)

    def without(self, names: Iterable[str]) -> Htpasswd:
        drop = set(names)
        return Htpasswd(users={k: v for k, v in self.users.items() if k not in drop}, other=self.other)


__all__ = [
    "Htpasswd",
    "UserEntry",
    "hash_password",
    "is_bcrypt",
    "validate_email",
    "validate_password",
    "validate_user_name",
    "verify_password",
]

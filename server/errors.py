"""Server-side additions to the overlaystore exception tree.

::

    OverlayStoreError (overlaystore.errors)
    ├── Unauthenticated        no, unknown, expired or revoked credentials (401)
    ├── Forbidden              authenticated, but not allowed (403)
    ├── TooManyRequests        login attempts rate-limited (429)
    └── UpstreamError          the upstream registry failed (502)
        ├── UpstreamUnavailable  offline mode or circuit breaker open (503)
        └── UpstreamTimeout      the upstream did not answer in time (504)

The mapping to HTTP statuses lives in :mod:`server.http_errors` alone.
"""

from __future__ import annotations

from overlaystore.errors import OverlayStoreError


class Unauthenticated(OverlayStoreError):
    """Credentials are missing, unknown, expired or revoked.

    ``scheme`` becomes the ``WWW-Authenticate`` challenge (npm words its
    message after it: ``Bearer`` → invalid token, ``Basic`` → bad password).
    """

    def __init__(self, message: str = "authentication required", *, scheme: str = "Bearer") -> None:
        self.scheme = scheme
        super().__init__(message)


class Forbidden(OverlayStoreError):
    """The user is known but may not do this."""


class TooManyRequests(OverlayStoreError):
    """Too many attempts; ``retry_after`` seconds until the next may succeed."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        self.retry_after = retry_after
        super().__init__(message)


class UpstreamError(OverlayStoreError):
    """The upstream registry answered with an error or garbage."""


class UpstreamUnavailable(UpstreamError):
    """The upstream is not consulted: offline mode, or the circuit is open."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer within the configured timeout."""


__all__ = [
    "Forbidden",
    "TooManyRequests",
    "Unauthenticated",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]

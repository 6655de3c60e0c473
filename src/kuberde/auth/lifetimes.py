"""Default token lifetimes, apart from the signing code: `kuberde token`'s help shows them,
and every command builds that help, so they must not cost an import of PyJWT."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["DEFAULT_AGENT_TTL", "DEFAULT_MANAGEMENT_TTL", "DEFAULT_USER_TTL"]

DEFAULT_USER_TTL = timedelta(hours=1)
DEFAULT_AGENT_TTL = timedelta(days=30)
DEFAULT_MANAGEMENT_TTL = timedelta(days=30)

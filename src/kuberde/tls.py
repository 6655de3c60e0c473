"""TLS contexts for the agent and the CLI: verification is always on.

An extra CA (for a self-signed gateway) is added with `--ca-file` / `KUBERDE_CA_FILE`;
there is deliberately no switch that turns verification off.
"""

from __future__ import annotations

import os
import ssl

__all__ = ["CA_FILE_ENV", "client_ssl_context", "server_ssl_context"]

CA_FILE_ENV = "KUBERDE_CA_FILE"


def client_ssl_context(ca_file: str | None = None) -> ssl.SSLContext:
    """Verifying client context trusting the system CAs plus `ca_file` (or $KUBERDE_CA_FILE)."""
    context = ssl.create_default_context()
    extra = ca_file or os.environ.get(CA_FILE_ENV)
    if extra:
        context.load_verify_locations(cafile=extra)
    return context


def server_ssl_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """Raises OSError naming both files and why they cannot serve (missing, not PEM, not a
    pair), as the commands report it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_file, key_file)
    except OSError as exc:
        if isinstance(exc, ssl.SSLError):
            why = "not a PEM certificate chain and its matching private key"
            why += f" ({exc.reason})" if exc.reason else ""
        else:
            why = exc.strerror or str(exc)
        raise OSError(
            f"cannot use TLS certificate {cert_file} with key {key_file}: {why}"
        ) from None
    return context

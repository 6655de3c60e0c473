"""The gateway's ES256 signing key, kept in its state directory.

The key is created on first start and reused afterwards, so tokens minted by
`kuberde token` stay valid across gateway restarts. Its `kid` is the RFC 7638 thumbprint
of the public key: stable, derived from nothing secret, and distinct for every key, which
lets verifiers hold several keys at once when rotation arrives.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kuberde.files import write_private

__all__ = [
    "SIGNING_KEY_FILE",
    "SigningKey",
    "SigningKeyError",
    "jwk_thumbprint",
    "load_or_create_signing_key",
    "load_signing_key",
    "public_jwk",
]

SIGNING_KEY_FILE = "signing-key.pem"
_COORDINATE_BYTES = 32


class SigningKeyError(Exception):
    """A key file that is unsafe or unusable; the gateway must not start with it."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _require_p256(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> None:
    if not isinstance(key.curve, ec.SECP256R1):
        raise SigningKeyError(f"ES256 needs a P-256 key, not {key.curve.name}")


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7517 members of a P-256 public key, without `kid`/`use`/`alg`."""
    _require_p256(public_key)
    numbers = public_key.public_numbers()
    return {
        "crv": "P-256",
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(_COORDINATE_BYTES, "big")),
        "y": _b64url(numbers.y.to_bytes(_COORDINATE_BYTES, "big")),
    }


def jwk_thumbprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint: the required members, sorted, without whitespace."""
    canonical = json.dumps(public_jwk(public_key), sort_keys=True, separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


class SigningKey:
    """A P-256 private key and the key ID verifiers look it up by."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey) -> None:
        _require_p256(private_key)
        self._private_key = private_key
        self._kid = jwk_thumbprint(private_key.public_key())

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, data: bytes) -> SigningKey:
        try:
            private_key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise SigningKeyError(f"not an unencrypted PEM private key: {exc}") from None
        if not isinstance(private_key, ec.EllipticCurvePrivateKey):
            raise SigningKeyError("ES256 needs an elliptic-curve (P-256) key")
        return cls(private_key)

    def to_pem(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def kid(self) -> str:
        return self._kid

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._private_key

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._private_key.public_key()

    def public_jwk(self) -> dict[str, str]:
        """The public key as a JWK, ready for a JWKS document."""
        return {**public_jwk(self.public_key), "kid": self._kid, "use": "sig", "alg": "ES256"}


def _ensure_private_dir(state_dir: Path) -> None:
    try:
        state_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        return
    # mkdir's mode is filtered by the umask; set it exactly on a directory we created.
    state_dir.chmod(0o700)


def _read_key(path: Path) -> SigningKey:
    """Read the key, refusing a file other users could read (it signs admin tokens)."""
    fd = os.open(path, os.O_RDONLY)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise SigningKeyError(f"signing key {path} is not a regular file")
        if info.st_mode & 0o077:
            raise SigningKeyError(
                f"signing key {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
            )
        data = file.read()
    try:
        return SigningKey.from_pem(data)
    except SigningKeyError as exc:
        raise SigningKeyError(f"signing key {path}: {exc}") from None


def load_or_create_signing_key(state_dir: Path) -> SigningKey:
    """Load the key from `state_dir`, creating the directory (0700) and key (0600) once."""
    _ensure_private_dir(state_dir)
    path = state_dir / SIGNING_KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        return _read_key(path)
    key = SigningKey.generate()
    # Exclusive: two gateways starting together cannot each keep a different key.
    if write_private(path, key.to_pem(), exclusive=True):
        return key
    return _read_key(path)


def load_signing_key(key_file: Path | None, state_dir: Path) -> SigningKey:
    """The key mounted from a Secret shared by the operator and the gateway, if given;
    otherwise the state directory's own (created on first use)."""
    if key_file is None:
        return load_or_create_signing_key(state_dir)
    try:
        data = key_file.read_bytes()
    except OSError as exc:
        raise SigningKeyError(f"cannot read signing key {key_file}: {exc.strerror}") from None
    try:
        return SigningKey.from_pem(data)
    except SigningKeyError as exc:
        raise SigningKeyError(f"signing key {key_file}: {exc}") from None

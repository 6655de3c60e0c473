from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import multiprocessing.queues
import multiprocessing.synchronize
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from kuberde.auth.keys import (
    SIGNING_KEY_FILE,
    SigningKey,
    SigningKeyError,
    load_or_create_signing_key,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _b64url_sha256(text: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


def test_kid_is_the_rfc7638_thumbprint() -> None:
    key = SigningKey.generate()
    # An independent JWK encoder (PyJWT's) and a hand-written canonical form.
    members = json.loads(ECAlgorithm.to_jwk(key.public_key))
    canonical = f'{{"crv":"{members["crv"]}","kty":"EC","x":"{members["x"]}","y":"{members["y"]}"}}'
    assert key.kid == _b64url_sha256(canonical)


def test_public_jwk_round_trips_through_pyjwt() -> None:
    key = SigningKey.generate()
    jwk = key.public_jwk()
    assert jwk["kid"] == key.kid
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    parsed = ECAlgorithm.from_jwk(json.dumps(jwk))
    assert isinstance(parsed, ec.EllipticCurvePublicKey)
    assert parsed.public_numbers() == key.public_key.public_numbers()


def test_distinct_keys_have_distinct_kids() -> None:
    assert SigningKey.generate().kid != SigningKey.generate().kid


def test_pem_round_trip_keeps_the_kid() -> None:
    key = SigningKey.generate()
    assert SigningKey.from_pem(key.to_pem()).kid == key.kid


@pytest.mark.parametrize(
    "pem",
    [
        b"not a key",
        rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    ],
    ids=["garbage", "rsa", "p384"],
)
def test_from_pem_refuses_unusable_keys(pem: bytes) -> None:
    with pytest.raises(SigningKeyError):
        SigningKey.from_pem(pem)


def test_creates_private_directory_and_key_file(tmp_path: Path) -> None:
    state_dir = tmp_path / "nested" / "state"
    key = load_or_create_signing_key(state_dir)
    key_file = state_dir / SIGNING_KEY_FILE
    assert _mode(state_dir) == 0o700
    assert _mode(key_file) == 0o600
    assert SigningKey.from_pem(key_file.read_bytes()).kid == key.kid
    assert sorted(p.name for p in state_dir.iterdir()) == [SIGNING_KEY_FILE]


def test_directory_mode_does_not_depend_on_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o277)
    try:
        load_or_create_signing_key(tmp_path / "state")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "state") == 0o700


def test_reuses_the_key_across_loads(tmp_path: Path) -> None:
    first = load_or_create_signing_key(tmp_path / "state")
    second = load_or_create_signing_key(tmp_path / "state")
    assert first.kid == second.kid
    assert first.to_pem() == second.to_pem()


def test_creates_key_in_existing_directory(tmp_path: Path) -> None:
    key = load_or_create_signing_key(tmp_path)
    assert (tmp_path / SIGNING_KEY_FILE).exists()
    assert load_or_create_signing_key(tmp_path).kid == key.kid


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_refuses_a_key_file_others_can_read(tmp_path: Path, mode: int) -> None:
    load_or_create_signing_key(tmp_path)
    key_file = tmp_path / SIGNING_KEY_FILE
    key_file.chmod(mode)
    with pytest.raises(SigningKeyError, match="chmod 600"):
        load_or_create_signing_key(tmp_path)
    assert key_file.exists()


def test_refuses_a_corrupt_key_file_instead_of_replacing_it(tmp_path: Path) -> None:
    key_file = tmp_path / SIGNING_KEY_FILE
    key_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbroken\n")
    key_file.chmod(0o600)
    with pytest.raises(SigningKeyError, match=SIGNING_KEY_FILE):
        load_or_create_signing_key(tmp_path)
    assert key_file.read_bytes().endswith(b"broken\n")


def test_loser_of_a_creation_race_uses_the_winners_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    winner = SigningKey.generate()
    real_link = os.link

    def link_after_another_process_won(src: str, dst: str) -> None:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as file:
            file.write(winner.to_pem())
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link_after_another_process_won)
    assert load_or_create_signing_key(tmp_path).kid == winner.kid
    monkeypatch.undo()
    assert load_or_create_signing_key(tmp_path).kid == winner.kid
    assert sorted(p.name for p in tmp_path.iterdir()) == [SIGNING_KEY_FILE]


def _create_in(
    state_dir: str,
    barrier: multiprocessing.synchronize.Barrier,
    results: multiprocessing.queues.Queue[str],
) -> None:
    barrier.wait(timeout=60)
    results.put(load_or_create_signing_key(Path(state_dir)).kid)


def test_concurrent_creation_by_several_processes_yields_one_key(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    processes_count = 8
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes_count)
    results: multiprocessing.queues.Queue[str] = ctx.Queue()
    processes = [
        ctx.Process(target=_create_in, args=(str(state_dir), barrier, results))
        for _ in range(processes_count)
    ]
    for process in processes:
        process.start()
    try:
        kids = [results.get(timeout=90) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
    assert all(process.exitcode == 0 for process in processes)
    assert len(set(kids)) == 1
    assert load_or_create_signing_key(state_dir).kid == kids[0]
    assert sorted(p.name for p in state_dir.iterdir()) == [SIGNING_KEY_FILE]

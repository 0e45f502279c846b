"""Device JWT verification (``provisioning.auth.verify``) on its own: libsodium through
PyJWT's public ``PyJWS`` registry, the required claims checked by us."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.identity import public_key_b64
from provisioning.auth import AUDIENCE, SIGNATURES, AuthError, DeviceKeys, SodiumEd25519, verify

DEVICE = "dev_0123456789abcdef"
NOW = time.time()


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "aud": AUDIENCE,
        "iss": DEVICE,
        "sub": DEVICE,
        "iat": NOW,
        "exp": NOW + 30,
        "jti": "j1",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not ...}


def _signed(key: Ed25519PrivateKey, payload: bytes) -> str:
    """A JWT over ``payload`` as raw bytes, signed with ``key`` (so any payload verifies)."""
    header = json.dumps({"alg": "EdDSA", "kid": DEVICE, "typ": "JWT"}).encode()
    signing_input = b".".join(base64.urlsafe_b64encode(p).rstrip(b"=") for p in (header, payload))
    signature = base64.urlsafe_b64encode(key.sign(signing_input)).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def _device(key: Ed25519PrivateKey, previous: Ed25519PrivateKey | None = None) -> DeviceKeys:
    old = public_key_b64(previous) if previous else None
    return DeviceKeys(DEVICE, public_key_b64(key), old, NOW + 60 if previous else None)


def test_a_good_token_verifies_and_names_its_key(key: Ed25519PrivateKey) -> None:
    token = jwt.encode(_claims(), key, algorithm="EdDSA", headers={"kid": DEVICE})
    claims, used = verify(token, _device(key), NOW)
    assert claims["jti"] == "j1"
    assert used == public_key_b64(key)


def test_the_previous_key_verifies_during_its_overlap(key: Ed25519PrivateKey) -> None:
    old = Ed25519PrivateKey.generate()
    token = jwt.encode(_claims(), old, algorithm="EdDSA", headers={"kid": DEVICE})
    assert verify(token, _device(key, previous=old), NOW)[1] == public_key_b64(old)
    with pytest.raises(AuthError, match="bad signature"):
        verify(token, _device(key), NOW)


@pytest.mark.parametrize("claim", ["aud", "exp", "iat", "iss", "jti", "sub"])
@pytest.mark.parametrize("value", [..., None])
def test_a_missing_or_null_claim_is_refused(
    key: Ed25519PrivateKey, claim: str, value: object
) -> None:
    token = _signed(key, json.dumps(_claims(**{claim: value})).encode())
    with pytest.raises(AuthError, match="MissingRequiredClaimError") as refused:
        verify(token, _device(key), NOW)
    assert (refused.value.status, refused.value.code) == (401, "invalid_token")


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"{not json", b"\xff\xfe", b"[" * 5000])
def test_a_signed_payload_that_is_not_a_json_object_is_refused(
    key: Ed25519PrivateKey, payload: bytes
) -> None:
    with pytest.raises(AuthError, match="JWT rejected: DecodeError"):
        verify(_signed(key, payload), _device(key), NOW)


def test_a_wrong_audience_is_refused(key: Ed25519PrivateKey) -> None:
    for audience in ("elsewhere", [AUDIENCE]):
        token = _signed(key, json.dumps(_claims(aud=audience)).encode())
        with pytest.raises(AuthError, match="audience"):
            verify(token, _device(key), NOW)


def test_only_eddsa_through_libsodium_is_registered() -> None:
    """Our ``PyJWS`` knows one algorithm, ours; PyJWT's module-level one keeps its own (the
    device signs with it)."""
    assert SIGNATURES.get_algorithms() == ["EdDSA"]
    assert isinstance(SIGNATURES.get_algorithm_by_name("EdDSA"), SodiumEd25519)
    assert not isinstance(jwt.PyJWS().get_algorithm_by_name("EdDSA"), SodiumEd25519)

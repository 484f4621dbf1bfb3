"""``PlatformClient.register_ca_with_proof``: the one home of "register a CA with proof of
possession", against the real server (the session's, through an account of the test's own)."""

from __future__ import annotations

import pytest
from cryptography.x509.oid import NameOID

from device_sdk.certs import issued_by
from firmware_helpers.errors import InvalidCAError
from firmware_helpers.pki import CertifiedKey, create_ca, generate_rsa_key, issue_device_certificate
from firmware_helpers.platform_client import PlatformAPIError, PlatformClient
from server_stub.launcher import RunningServer


def _client(server: RunningServer) -> PlatformClient:
    return PlatformClient(server.http_url, server.token)


def test_the_ca_is_registered_with_a_verification_certificate_for_the_code(
    server: RunningServer,
) -> None:
    api = _client(server)
    ca = create_ca("Proof CA")
    registered = api.register_ca_with_proof("proof_ca", ca)
    assert registered.ca_sn == ca.sn
    assert registered.registration_code == api.registration_code()
    proof = registered.verification.certificate
    cn = proof.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == registered.registration_code
    assert issued_by(proof, ca.certificate)
    listed = {c["caSn"]: c for c in api.ca_certificates()}
    assert listed[ca.sn]["name"] == "proof_ca" and listed[ca.sn]["status"] == "active"


def test_a_wrong_ca_key_is_refused_before_anything_is_sent(server: RunningServer) -> None:
    api = _client(server)
    ca = create_ca("Proof CA Wrong Key")
    code = api.registration_code()
    with pytest.raises(InvalidCAError) as refused:
        api.register_ca_with_proof("wrong_key_ca", CertifiedKey(ca.certificate, generate_rsa_key()))
    message = str(refused.value)
    assert "the key given for CA 'wrong_key_ca' is not the private key of the CA" in message
    assert "Proof CA Wrong Key" in message and ca.sn in message
    # nothing registered, nothing changed: the right key still registers the same CA at once
    assert api.ca_certificates() == [] and api.registration_code() == code
    assert api.register_ca_with_proof("wrong_key_ca", ca).ca_sn == ca.sn


def test_a_device_certificate_is_not_a_ca(server: RunningServer) -> None:
    device = issue_device_certificate(create_ca("Proof Issuer"), "dev-0001")
    with pytest.raises(InvalidCAError, match="is not a CA certificate"):
        _client(server).register_ca_with_proof("device_ca", device)
    assert _client(server).ca_certificates() == []


def test_the_platforms_refusals_stay_api_errors(server: RunningServer) -> None:
    api = _client(server)
    ca = create_ca("Proof CA Twice")
    api.register_ca_with_proof("twice_ca", ca)
    with pytest.raises(PlatformAPIError) as refused:
        api.register_ca_with_proof("twice_ca_again", ca)
    assert refused.value.status == 409, refused.value
    assert [c["caSn"] for c in api.ca_certificates()] == [ca.sn]

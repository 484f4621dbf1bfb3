"""DeviceClient without a server: client id, username, topics, offline rules, TLS settings, and
the mapping of TLS/socket failures to errors that say what to do."""

from __future__ import annotations

import json
import os
import socket
import ssl
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from device_sdk import Credentials, DeviceClient, Identity
from device_sdk.errors import (
    CertificateFormatError,
    CertificateRejectedError,
    ConnectionFailedError,
    ConnectTimeoutError,
    DeviceSDKError,
    InvalidNameError,
    NotConnectedError,
    OfflineQueueFullError,
    ServerUntrustedError,
)
from device_sdk.exit_codes import ExitCode
from device_sdk.identity_store import IdentityStore
from device_sdk.platform import format_username
from device_sdk.refusals import map_connect_error
from device_sdk.tls import build_ssl_context
from tests.sdk.conftest import PK


@pytest.fixture
def creds(device_files: tuple[Path, Path]) -> Credentials:
    return Credentials.from_files(*device_files)


def _client(creds: Credentials, pki: Any, **kwargs: Any) -> DeviceClient:
    return DeviceClient("127.0.0.1", 1, creds, server_ca=pki.ca.cert_pem(), **kwargs)


def test_client_id_defaults_to_the_certificate_sn(creds: Credentials, pki: Any) -> None:
    client = _client(creds, pki)
    assert str(client.client_id) == f"{creds.sn}|securemode=2|"
    assert str(_client(creds, pki, client_id="aa:bb:cc").client_id) == "aa:bb:cc|securemode=2|"
    with pytest.raises(InvalidNameError, match="without '\\|'"):
        _client(creds, pki, client_id="bad|id")
    with pytest.raises(InvalidNameError, match="1-64 characters"):
        _client(creds, pki, client_id="x" * 65)


@pytest.mark.parametrize("keepalive", [29, 1201, 0])
def test_keepalive_outside_the_platform_range_is_refused(
    creds: Credentials, pki: Any, keepalive: int
) -> None:
    with pytest.raises(ValueError, match=r"30\.\.1200 s"):
        _client(creds, pki, keepalive=keepalive)


def test_username_comes_from_the_stored_identity(
    creds: Credentials, pki: Any, tmp_path: Path
) -> None:
    ident = Identity(PK, "sensor01")
    assert format_username(ident) == f"sensor01&{PK}"
    store = tmp_path / "identity.json"
    IdentityStore(store).save(ident, creds.certificate)
    client = _client(creds, pki, identity_store=store)
    assert client.identity == ident
    assert client.topic("user/update") == f"/{PK}/sensor01/user/update"
    assert client.topic("/sys/x") == "/sys/x"
    assert _client(creds, pki).identity is None


def test_identity_stored_for_another_certificate_is_not_used(
    creds: Credentials, pki: Any, tmp_path: Path
) -> None:
    store = tmp_path / "identity.json"
    other = pki.device(PK, "sensor99")
    IdentityStore(store).save(Identity(PK, "sensor99"), other.certificate)
    with pytest.warns(
        RuntimeWarning,
        match=rf"sensor99.*stored for the certificate with SN "
        rf"{other.sn}, not this device's \(SN {creds.sn}\)",
    ):
        client = _client(creds, pki, identity_store=store)
    assert client.identity is None  # so no username is sent: the platform names the device
    # a file written by an older SDK does not say for which certificate: not trusted either
    store.write_text(json.dumps({"productKey": PK, "deviceName": "sensor01"}))
    with pytest.warns(RuntimeWarning, match="an unrecorded certificate"):
        assert _client(creds, pki, identity_store=store).identity is None
    assert IdentityStore(store).load() == Identity(PK, "sensor01")  # (unchecked read still works)


def test_relative_topics_need_an_identity(creds: Credentials, pki: Any) -> None:
    client = _client(creds, pki)
    with pytest.raises(NotConnectedError, match="needs the device's identity"):
        client.topic("user/update")
    # a generic broker has no identity: topics are used as given
    assert _client(creds, pki, expect_identity=False).topic("plain/topic") == "plain/topic"


def test_offline_publish_rules(creds: Credentials, pki: Any) -> None:
    client = _client(creds, pki, offline_queue_size=2, offline_drop_policy="raise")
    with pytest.raises(NotConnectedError, match=r"QoS 0 message .* not sent.*qos=1"):
        client.publish("user/update", b"x", qos=0)
    with pytest.raises(ValueError, match="QoS 2 is not supported"):
        client.publish("user/update", b"x", qos=2)
    first = client.publish("user/update", b"1", qos=1)
    client.publish("user/update", "2", qos=1)
    assert first.queued and not first.is_published and len(client.offline_queue) == 2
    with pytest.raises(OfflineQueueFullError, match="offline queue is full"):
        client.publish("user/update", b"3", qos=1)


def test_drop_oldest_marks_the_dropped_delivery(creds: Credentials, pki: Any) -> None:
    client = _client(creds, pki, offline_queue_size=1)
    first = client.publish("user/a", b"1", qos=1)
    second = client.publish("user/b", b"2", qos=1)
    assert first.wait(0) is False and first.dropped
    assert not second.dropped and len(client.offline_queue) == 1


def test_ssl_context_is_strict(creds: Credentials, pki: Any) -> None:
    context = build_ssl_context(creds, pki.ca.cert_pem())
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_unreadable_server_ca_is_a_credential_error(creds: Credentials, tmp_path: Path) -> None:
    with pytest.raises(CertificateFormatError, match=r"cannot read certificate file .*none\.pem"):
        build_ssl_context(creds, tmp_path / "none.pem")
    bad = tmp_path / "bad.pem"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CertificateFormatError, match="no CERTIFICATE block"):
        DeviceClient("127.0.0.1", 8883, creds, server_ca=bad)


def test_nothing_listening_is_retried_then_times_out(creds: Credentials, pki: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        client = DeviceClient(
            "127.0.0.1",
            port,
            creds,
            server_ca=pki.ca.cert_pem(),
            reconnect_base=0.05,
            reconnect_cap=0.2,
        )
        with pytest.raises(ConnectTimeoutError, match=r"within 1 s.*connection refused") as info:
            client.connect(timeout=1)
    assert isinstance(info.value.__cause__, ConnectionFailedError)
    assert client.state.value == "stopped"


def _ssl_error(reason: str, text: str) -> ssl.SSLError:
    err = ssl.SSLError(1, f"[SSL: {reason}] {text} (_ssl.c:2580)")
    err.reason = reason  # what OpenSSL sets; a bare SSLError carries it in the text only
    return err


@pytest.mark.parametrize(
    ("reason", "text"),
    [
        ("TLSV13_ALERT_CERTIFICATE_REQUIRED", "tlsv13 alert certificate required"),
        ("SSLV3_ALERT_BAD_CERTIFICATE", "sslv3 alert bad certificate"),
        ("TLSV1_ALERT_UNKNOWN_CA", "tlsv1 alert unknown ca"),
    ],
)
def test_alerts_about_our_certificate_map_to_certificate_rejected(reason: str, text: str) -> None:
    for exc in (_ssl_error(reason, text), ssl.SSLError(1, f"[SSL: {reason}] {text}")):
        err = map_connect_error(exc, "h", 1)
        assert isinstance(err, CertificateRejectedError)
        assert "registered with the platform and active" in str(err) and err.__cause__ is exc


def test_reset_right_after_the_handshake_is_certificate_rejected() -> None:
    exc = ConnectionResetError(104, "Connection reset by peer")
    assert isinstance(
        map_connect_error(exc, "h", 1, after_handshake=True), CertificateRejectedError
    )
    during = map_connect_error(exc, "h", 1)
    assert type(during) is ConnectionFailedError and "during the TLS handshake" in str(during)


@pytest.mark.parametrize(
    ("exc", "cls", "text"),
    [
        (ConnectionRefusedError(111, "refused"), ConnectionFailedError, "is the server running"),
        (TimeoutError("timed out"), ConnectTimeoutError, "timed out"),
        (socket.gaierror(-2, "Name or service not known"), ConnectionFailedError, "cannot resolve"),
        (
            _ssl_error("WRONG_VERSION_NUMBER", "wrong version number"),
            ConnectionFailedError,
            "TLS 1.2 or newer",
        ),
    ],
)
def test_other_failures(exc: BaseException, cls: type[DeviceSDKError], text: str) -> None:
    err = map_connect_error(exc, "h", 1)
    assert type(err) is cls and text in str(err) and err.__cause__ is exc


def test_server_verification_failures_say_what_to_check() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    exc.verify_message = "unable to get local issuer certificate"
    err = map_connect_error(exc, "h", 1)
    assert isinstance(err, ServerUntrustedError) and "server CA" in str(err)
    exc.verify_message = "IP address mismatch, certificate is not valid for '10.0.0.1'"
    assert "does not name" in str(map_connect_error(exc, "10.0.0.1", 1))
    exc.verify_message = "certificate has expired"
    assert "clock may be wrong" in str(map_connect_error(exc, "h", 1))


def test_server_that_never_answers_the_handshake_is_a_connect_timeout(
    creds: Credentials, pki: Any
) -> None:
    held: list[socket.socket] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(5)
        port = listener.getsockname()[1]
        client = DeviceClient(
            "127.0.0.1",
            port,
            creds,
            server_ca=pki.ca.cert_pem(),
            attempt_timeout=0.3,
            reconnect_base=0.05,
            reconnect_cap=0.1,
        )

        def accept_and_hold() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                held.append(conn)  # accepted, never answers the ClientHello

        threading.Thread(target=accept_and_hold, daemon=True).start()
        with pytest.raises(ConnectTimeoutError, match=r"within 1\.5 s.*timed out") as info:
            client.connect(timeout=1.5)
        assert isinstance(info.value.__cause__, ConnectTimeoutError)
    for conn in held:
        conn.close()
    assert len(held) >= 2  # retried with backoff until the deadline


def test_key_reaches_openssl_without_a_lasting_file(
    creds: Credentials, pki: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without memfd (not Linux), the chain goes through a 0600 file in a private directory
    and the key through a named pipe beside it: the key is never stored in a file, and the
    directory is gone once the context is built."""
    made: list[Path] = []
    seen: list[tuple[int, int, bytes, bool]] = []
    real_mkdtemp = tempfile.mkdtemp
    real_load = ssl.SSLContext.load_cert_chain

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        path = str(real_mkdtemp(*args, **kwargs))
        made.append(Path(path))
        return path

    def load_cert_chain(
        self: ssl.SSLContext, certfile: str, keyfile: str, *args: Any, **kwargs: Any
    ) -> None:
        seen.append(
            (
                Path(certfile).stat().st_mode & 0o777,
                Path(certfile).parent.stat().st_mode & 0o777,
                Path(certfile).read_bytes(),
                stat.S_ISFIFO(Path(keyfile).stat().st_mode),
            )
        )
        real_load(self, certfile, keyfile, *args, **kwargs)

    monkeypatch.delattr(os, "memfd_create", raising=False)  # (the module keyfile uses)
    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(ssl.SSLContext, "load_cert_chain", load_cert_chain)
    build_ssl_context(creds, pki.ca.cert_pem())
    assert len(made) == 1 and not made[0].exists()
    file_mode, dir_mode, content, key_is_pipe = seen[0]
    assert (file_mode, dir_mode) == (0o600, 0o700)
    assert b"BEGIN CERTIFICATE" in content and b"PRIVATE KEY" not in content
    assert key_is_pipe


def test_cli_usage_errors_are_messages_not_tracebacks(
    device_files: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from iotx509.cli import main

    cert, key = device_files
    for args, says in (
        (["--cert", str(cert)], "give --cert and --key (or --store DIR)"),
        (["--store", "/nonexistent", "--cert", str(cert)], "either --store or --cert/--key"),
    ):
        with pytest.raises(SystemExit) as info:  # usage mistakes: status 2, as argparse's own
            main(["device", "connect", *args])
        assert info.value.code == 2 and says in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["device", "connect", "--cert", str(cert), "--key", str(key), "--keepalive", "5"])
    assert info.value.code == 2 and "30..1200" in capsys.readouterr().err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert (
            main(
                [
                    "device",
                    "connect",
                    "--cert",
                    str(cert),
                    "--key",
                    str(key),
                    "--port",
                    str(port),
                    "--timeout",
                    "0.5",
                ]
            )
            == ExitCode.NETWORK
        )
    assert "connection refused" in capsys.readouterr().err


def test_eof_on_the_first_write_after_the_handshake_is_certificate_rejected() -> None:
    # What Python raises when a TLS 1.3 server closed after judging the certificate and the
    # client's write of CONNECT (inside paho's connect) meets the closed link.
    exc = ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)")
    after = map_connect_error(exc, "h", 1, after_handshake=True)
    assert isinstance(after, CertificateRejectedError)
    assert "registered with the platform and active" in str(after)
    during = map_connect_error(exc, "h", 1)
    assert type(during) is ConnectionFailedError and "TLS 1.2 or newer" in str(during)

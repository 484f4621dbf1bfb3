"""The SDK against the real reference server (``iotx509 server run`` subprocess): identity,
username, identity change, each refusal, restart with the offline queue, loose key permissions."""

from __future__ import annotations

import json
import logging
import queue
import stat
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from device_sdk import (
    CertificateRejectedError,
    ClockError,
    ConnectionState,
    Credentials,
    DeviceClient,
    Identity,
    IdentityTimeoutError,
    InsecureKeyFileWarning,
    Message,
    NotAuthorizedError,
    ServerUntrustedError,
)
from device_sdk.certs import fingerprint_sha256
from device_sdk.errors import DeviceSDKError, SessionTakenOverError
from device_sdk.exit_codes import ExitCode
from device_sdk.identity_store import IdentityStore
from firmware_helpers.pki import create_ca, issue_device_certificate
from iotx509.cli import main as iotx509_main
from server_stub.launcher import running_server
from tests.common import Platform, same_ports, wait_for
from tests.sdk.brokers import free_port
from tests.sdk.platform_setup import platform_server

# ``platform``: an account of the test's own on the session's server (tests/conftest.py).


def test_identity_is_received_persisted_and_used_for_topics(
    platform: Platform, tmp_path: Path
) -> None:
    dev = platform.issue("sensor-id1")
    store = tmp_path / "state" / "identity.json"
    changes: list[tuple[Identity | None, Identity]] = []
    creds = Credentials.from_files(dev.cert, dev.key)
    expected = Identity(platform.product_key, "sensor-id1")
    with platform.device_client(
        creds,
        identity_store=store,
        on_identity_changed=lambda old, new: changes.append((old, new)),
    ) as client:
        assert client.connect(timeout=10) == expected
        assert client.identity == expected
        assert changes == [(None, expected)]
        # the device publishes on a relative topic; the platform records it under /pk/dn/
        assert client.publish("user/update", b'{"t": 21.5}', qos=1).wait(10)
        assert wait_for(
            lambda: any(
                m["topic"] == f"/{platform.product_key}/sensor-id1/user/update"
                for m in platform.api.device_messages(platform.product_key, "sensor-id1")
            )
        )
        # and receives what the cloud sends on its subscription
        got: queue.Queue[Message] = queue.Queue()
        client.subscribe("user/get", got.put)
        assert wait_for(
            lambda: platform.api.send_message(
                platform.product_key,
                "sensor-id1",
                f"/{platform.product_key}/sensor-id1/user/get",
                "hello",
                qos=1,
            ),
            timeout=10,
        )
        msg = got.get(timeout=10)
        assert (msg.topic, msg.payload) == (
            f"/{platform.product_key}/sensor-id1/user/get",
            b"hello",
        )
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert json.loads(store.read_text()) == {
        **expected.to_json(),
        "certSn": dev.pair.sn,
        "certSha256": fingerprint_sha256(creds.certificate),
    }


def test_stored_identity_is_sent_as_username_next_time(platform: Platform, tmp_path: Path) -> None:
    dev = platform.issue("sensor-id2")
    store = tmp_path / "identity.json"
    creds = Credentials.from_files(dev.cert, dev.key)
    with platform.device_client(creds, identity_store=store) as first:
        first.connect(timeout=10)
    changes: list[tuple[Identity | None, Identity]] = []
    with platform.device_client(
        creds,
        identity_store=store,
        on_identity_changed=lambda old, new: changes.append((old, new)),
    ) as second:
        assert second.identity == Identity(platform.product_key, "sensor-id2")  # before connecting
        assert second.connect(timeout=10) == second.identity
    assert changes == []  # same identity: no callback
    # the username (sent: see the identity-change test, where the server names it when refusing
    # it) was accepted at once, without the SDK's fallback to an empty username
    assert f"'sensor-id2&{platform.product_key}'" not in platform.server.log()


def test_identity_changed_by_the_platform_wins_and_is_reported(
    platform: Platform, tmp_path: Path
) -> None:
    dev = platform.issue("sensor-old")
    store = tmp_path / "identity.json"
    creds = Credentials.from_files(dev.cert, dev.key)
    with platform.device_client(creds, identity_store=store) as client:
        client.connect(timeout=10)
    # the customer re-associates this certificate with another device name
    platform.api.delete_association(platform.ca.sn, dev.pair.sn)
    platform.associate(platform.ca, "sensor-new", dev.pair.sn)
    changes: list[tuple[Identity | None, Identity]] = []
    with platform.device_client(
        creds,
        identity_store=store,
        on_identity_changed=lambda old, new: changes.append((old, new)),
    ) as client:
        new = client.connect(timeout=10)
    old = Identity(platform.product_key, "sensor-old")
    assert new == Identity(platform.product_key, "sensor-new")
    assert changes == [(old, new)]
    assert IdentityStore(store).load() == new
    # the stale username really was sent, refused, and replaced by an empty one
    assert f"'sensor-old&{platform.product_key}' names another device" in platform.server.log()


def test_unassociated_certificate_is_not_authorized(platform: Platform) -> None:
    dev = platform.issue("sensor-unassoc", associate=False)
    client = platform.device_client(Credentials.from_files(dev.cert, dev.key))
    with pytest.raises(NotAuthorizedError, match=r"CONNACK 5.*SN .* associated with a device"):
        client.connect(timeout=10)
    assert client.state is ConnectionState.STOPPED


def test_certificate_from_an_unregistered_ca_is_rejected(platform: Platform) -> None:
    dev = platform.issue("sensor-stranger", create_ca("Never Registered CA"), associate=False)
    client = platform.device_client(Credentials.from_files(dev.cert, dev.key))
    with pytest.raises(
        CertificateRejectedError, match="registered with the platform and active"
    ) as info:
        client.connect(timeout=10)
    assert info.value.__cause__ is not None


def test_disabled_ca_closes_the_session_and_later_connections_are_rejected(
    platform: Platform,
) -> None:
    second_ca = create_ca("SDK Second CA")
    platform.register_ca(second_ca, "sdk_second_ca")
    dev = platform.issue("sensor-ca2", second_ca)
    creds = Credentials.from_files(dev.cert, dev.key)
    events: list[tuple[ConnectionState, DeviceSDKError | None]] = []
    with platform.device_client(
        creds,
        reconnect_base=0.1,
        reconnect_cap=0.5,
        on_connection_state=lambda s, e: events.append((s, e)),
    ) as client:
        client.connect(timeout=10)
        platform.api.set_ca_status(second_ca.sn, "inactive")
        # the live session is closed; retries are refused and reported to the application
        assert wait_for(
            lambda: any(isinstance(e, CertificateRejectedError) for _, e in events), timeout=15
        ), events
        assert client.state is not ConnectionState.ONLINE
    with pytest.raises(CertificateRejectedError):
        platform.device_client(creds).connect(timeout=10)
    platform.api.set_ca_status(second_ca.sn, "active")
    assert wait_for(lambda: _connects(platform, creds), timeout=10)


def _connects(platform: Platform, creds: Credentials) -> bool:
    try:
        with platform.device_client(creds) as client:
            client.connect(timeout=5)
        return True
    except CertificateRejectedError:
        return False


def test_loose_key_permissions_warn_but_still_connect(platform: Platform) -> None:
    dev = platform.issue("sensor-loose")
    dev.key.chmod(0o644)
    with pytest.warns(InsecureKeyFileWarning, match="chmod 600"):
        creds = Credentials.from_files(dev.cert, dev.key)
    with platform.device_client(creds) as client:
        assert client.connect(timeout=10) == Identity(platform.product_key, "sensor-loose")


def test_cli_prints_the_identity_or_the_error(
    platform: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dev = platform.issue("sensor-cli")
    store = tmp_path / "id.json"
    args = _cli(platform, dev.cert, dev.key, "--identity-store", str(store))
    assert iotx509_main([*args, "--publish", "user/update", "from-cli"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {
        "productKey": platform.product_key,
        "deviceName": "sensor-cli",
        "certSn": dev.pair.sn,
    }
    assert IdentityStore(store).load() == Identity(platform.product_key, "sensor-cli")
    assert wait_for(
        lambda: any(
            m["payload"] == "from-cli"
            for m in platform.api.device_messages(platform.product_key, "sensor-cli")
        )
    )
    stranger = platform.issue("sensor-cli2", associate=False)
    assert iotx509_main(_cli(platform, stranger.cert, stranger.key)) == ExitCode.NOT_AUTHORISED
    captured = capsys.readouterr()
    assert captured.out == "" and "error: " in captured.err and "associated" in captured.err


def _cli(platform: Platform, cert: Path, key: Path, *extra: str) -> list[str]:
    return ["device", "connect", *platform.device_args(cert, key), "--timeout", "10", *extra]


def test_cli_exit_status_says_which_failure(
    platform: Platform, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each failure a user meets at `iotx509 device connect`, with its documented status."""

    def status(args: list[str]) -> tuple[int, str]:
        code = iotx509_main(args)
        return code, capsys.readouterr().err

    now = datetime.now(UTC)
    pk = platform.product_key
    # credentials: the key of another device
    one, other = platform.issue("exit-cred1"), platform.issue("exit-cred2")
    code, err = status(_cli(platform, one.cert, other.key))
    assert code == ExitCode.CREDENTIALS and "does not belong" in err
    # an expired certificate needs a new one (not a clock retry)
    expired = issue_device_certificate(
        platform.ca, "exit-expired", product_key=pk, days=1, now=now - timedelta(days=3)
    )
    expired.write(tmp_path / "expired.cer", tmp_path / "expired.key")
    code, err = status(_cli(platform, tmp_path / "expired.cer", tmp_path / "expired.key"))
    assert code == ExitCode.CREDENTIALS and "has expired" in err
    # a certificate not valid yet: the clock is probably not set yet
    future = issue_device_certificate(
        platform.ca, "exit-future", product_key=pk, days=30, now=now + timedelta(days=2)
    )
    future.write(tmp_path / "future.cer", tmp_path / "future.key")
    code, err = status(_cli(platform, tmp_path / "future.cer", tmp_path / "future.key"))
    assert code == ExitCode.CLOCK and "system clock" in err
    # the server refuses the certificate in the TLS handshake (CA never registered)
    stranger = platform.issue("exit-stranger", create_ca("Exit Unregistered CA"), associate=False)
    code, err = status(_cli(platform, stranger.cert, stranger.key))
    assert code == ExitCode.CERTIFICATE_REJECTED and "registered with the platform" in err
    # not authorised: the certificate is associated with no device
    loner = platform.issue("exit-loner", associate=False)
    code, err = status(_cli(platform, loner.cert, loner.key))
    assert code == ExitCode.NOT_AUTHORISED and "CONNACK 5" in err
    # configuration: a server CA that did not issue the server's certificate; the hint names
    # the command's own flag
    good = platform.issue("exit-config")
    impostor = tmp_path / "impostor-ca.pem"
    impostor.write_bytes(create_ca("Exit Look-alike CA").cert_pem())
    args = _cli(platform, good.cert, good.key)
    args[args.index("--server-ca") + 1] = str(impostor)
    code, err = status(args)
    assert code == ExitCode.CONFIGURATION and "Is --server-ca the CA" in err
    # network: nothing listens on the port (retried until --timeout, then given up)
    args = _cli(platform, good.cert, good.key)
    args[args.index("--port") + 1] = str(free_port())
    args[args.index("--timeout") + 1] = "1"
    code, err = status(args)
    assert code == ExitCode.NETWORK and "connection refused" in err
    assert status(_cli(platform, good.cert, good.key))[0] == 0


def test_cli_says_a_loose_key_file_once(platform: Platform) -> None:
    dev = platform.issue("sensor-loose-cli")
    dev.key.chmod(0o644)
    result = subprocess.run(
        [sys.executable, "-m", "iotx509", *_cli(platform, dev.cert, dev.key)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("chmod 600") == 1, result.stderr
    assert "warning: private key file" in result.stderr


def test_two_processes_with_one_certificate_are_told_and_slowed_down(
    platform: Platform, caplog: pytest.LogCaptureFixture
) -> None:
    """The server hands the session to the newest connection of a device: two clients with one
    certificate kick each other off. Each is told so in plain words and backs off to the cap."""
    dev = platform.issue("sensor-twin")
    creds = Credentials.from_files(dev.cert, dev.key)
    told: queue.Queue[SessionTakenOverError] = queue.Queue()

    def on_state(state: ConnectionState, error: DeviceSDKError | None) -> None:
        if isinstance(error, SessionTakenOverError):
            told.put(error)

    cap = 3.0
    twins = [
        platform.device_client(
            creds, reconnect_base=0.05, reconnect_cap=cap, on_connection_state=on_state
        )
        for _ in range(2)
    ]
    with caplog.at_level(logging.WARNING, logger="device_sdk.client"):
        for twin in twins:
            twin.start()
        try:
            error = told.get(timeout=60)
        finally:
            for twin in twins:
                twin.disconnect()
    assert "another connection with the same certificate" in str(error)
    assert f"SN {dev.pair.sn}" in str(error) and error.sessions >= 3
    assert "replaced by a new connection of the same device" in platform.server.log()
    # it waited the cap (no jitter below it) before trying again, instead of storming
    assert any(
        "taking over the session" in r.getMessage() and f"retrying in {cap:.1f} s" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_identity_file_of_another_device_costs_no_refused_attempt(
    platform: Platform, tmp_path: Path
) -> None:
    first, second = platform.issue("sensor-first"), platform.issue("sensor-second")
    store = tmp_path / "identity.json"
    with platform.device_client(
        Credentials.from_files(first.cert, first.key), identity_store=store
    ) as client:
        client.connect(timeout=10)
    # the file is copied to another board (or the board gets a new certificate)
    with pytest.warns(RuntimeWarning, match="stored for the certificate with SN"):
        client = platform.device_client(
            Credentials.from_files(second.cert, second.key), identity_store=store
        )
    with client:
        assert client.identity is None
        assert client.connect(timeout=10) == Identity(platform.product_key, "sensor-second")
    # the stale name was never sent as username, so the server never refused it
    assert f"'sensor-first&{platform.product_key}'" not in platform.server.log()
    assert IdentityStore(store).load(second.pair.certificate) == client.identity


def test_restart_keeps_identity_and_delivers_the_offline_queue(tmp_path: Path) -> None:
    """A server of its own: it is killed and started again on its data directory and ports."""
    events: list[tuple[ConnectionState, DeviceSDKError | None]] = []
    changes: list[tuple[Identity | None, Identity]] = []
    with platform_server(tmp_path) as platform:
        dev = platform.issue("sensor-restart")
        ports, mqtt_port = same_ports(platform.server), platform.server.mqtt_port
        creds = Credentials.from_files(dev.cert, dev.key)
        client = platform.device_client(
            creds,
            identity_store=tmp_path / "id.json",
            reconnect_base=0.2,
            reconnect_cap=1.0,
            on_connection_state=lambda s, e: events.append((s, e)),
            on_identity_changed=lambda old, new: changes.append((old, new)),
        )
        identity = client.connect(timeout=10)
        got: queue.Queue[Message] = queue.Queue()
        client.subscribe("user/get", got.put)
        platform.server.process.kill()  # a crash, not a clean shutdown
        platform.server.process.wait()
        assert wait_for(lambda: client.state is not ConnectionState.ONLINE)
        deliveries = [
            client.publish("user/update", f"queued-{n}".encode(), qos=1) for n in range(3)
        ]
        assert all(d.queued for d in deliveries) and len(client.offline_queue) == 3
    with running_server(tmp_path / "data", extra_args=ports) as server:
        assert all(d.wait(30) for d in deliveries), events[-3:]
        assert client.identity == identity and changes == [(None, identity)]
        recent = platform.api.device_messages(platform.product_key, "sensor-restart")
        assert [m["payload"] for m in recent if m["payload"].startswith("queued-")] == [
            "queued-0",
            "queued-1",
            "queued-2",
        ]
        # the subscription was renewed on the new session
        assert wait_for(
            lambda: platform.api.send_message(
                platform.product_key,
                "sensor-restart",
                f"/{platform.product_key}/sensor-restart/user/get",
                "after-restart",
                qos=1,
            )
        )
        assert got.get(timeout=10).payload == b"after-restart"
        assert server.mqtt_port == mqtt_port
        client.disconnect()
    offline = [e for s, e in events if s is ConnectionState.OFFLINE]
    assert offline and all(e is not None for e in offline)


def test_wrong_server_ca_is_server_untrusted(platform: Platform) -> None:
    dev = platform.issue("sensor-untrusted")
    client = DeviceClient(
        platform.server.mqtt_host,
        platform.server.mqtt_port or 0,
        Credentials.from_files(dev.cert, dev.key),
        server_ca=create_ca("Look-alike Server CA").cert_pem(),
    )
    with pytest.raises(ServerUntrustedError, match="could not be verified against the server CA"):
        client.connect(timeout=10)


def test_certificate_that_expires_after_loading_is_a_clock_error_at_connect(
    platform: Platform,
) -> None:
    # valid for a few more seconds only: a board whose clock ran past the certificate
    almost = datetime.now(UTC) - timedelta(days=1) + timedelta(seconds=2)
    pair = issue_device_certificate(
        platform.ca, "sensor-expiring", product_key=platform.product_key, days=1, now=almost
    )
    platform.associate(platform.ca, "sensor-expiring", pair.sn)
    creds = Credentials.from_pem(pair.cert_pem(), pair.key_pem())
    client = platform.device_client(creds)
    assert wait_for(lambda: datetime.now(UTC) > pair.certificate.not_valid_after_utc, timeout=10)
    with pytest.raises(ClockError, match=r"has expired.*system clock says"):
        client.connect(timeout=10)


def test_server_that_does_not_publish_identities(tmp_path: Path) -> None:
    """A server of its own, started with ``--no-identity-publish``."""
    with platform_server(tmp_path, extra_args=("--no-identity-publish",)) as quiet:
        dev = quiet.issue("sensor-quiet")
        creds = Credentials.from_files(dev.cert, dev.key)
        with pytest.raises(IdentityTimeoutError, match="did not send this device's identity"):
            quiet.device_client(creds, identity_timeout=1.0).connect(timeout=10)
        # as a generic broker: no identity, absolute topics
        with quiet.device_client(creds, expect_identity=False) as client:
            assert client.connect(timeout=10) is None
            topic = f"/{quiet.product_key}/sensor-quiet/user/update"
            assert client.publish(topic, b"no-identity", qos=1).wait(10)
        assert any(
            m["payload"] == "no-identity"
            for m in quiet.api.device_messages(quiet.product_key, "sensor-quiet")
        )


def test_connect_again_after_disconnect(platform: Platform) -> None:
    dev = platform.issue("sensor-again")
    client = platform.device_client(Credentials.from_files(dev.cert, dev.key))
    first = client.connect(timeout=10)
    client.disconnect()
    assert client.state is ConnectionState.STOPPED
    assert client.connect(timeout=10) == first
    assert client.publish("user/update", b"again", qos=1).wait(10)
    client.disconnect()

"""The refusal table: every way a connection attempt can fail, mapped once to the SDK's errors.

What ``ssl`` and the socket layer raise, the CONNACK codes a server answers, the deadlines the
client keeps (CONNACK, identity) and the patterns it notices across attempts (a session taken
over) all become a :class:`~device_sdk.errors.DeviceSDKError` here, each with a message that says
what to check. Nothing else in the SDK writes such a message.

With TLS 1.3 the server's verdict on the client certificate arrives *after* the client finished
its half of the handshake, so a reset or an alert read before CONNACK (``after_handshake``) is
how a server refuses a certificate.

Messages name the settings a person can change. An application sees the SDK's keyword names
(``expect_identity=False``); a person at the ``iotx509`` command sees its flags
(``--no-identity``): :class:`HintNames` says which.
"""

from __future__ import annotations

import socket
import ssl
from typing import NamedTuple

from device_sdk import values
from device_sdk.errors import (
    CertificateRejectedError,
    ClockError,
    ConnectionFailedError,
    ConnectionRefusedByServerError,
    ConnectTimeoutError,
    CredentialError,
    DeviceSDKError,
    IdentityTimeoutError,
    NotAuthorizedError,
    ServerUntrustedError,
    SessionTakenOverError,
)

#: OpenSSL alert reasons meaning: the server did not accept our certificate.
CLIENT_CERT_REJECTED_REASONS = frozenset(
    {
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_DECRYPT_ERROR",
    }
)

#: Refusals that a quick retry cannot fix: ``connect()`` raises them at once; a background
#: client reports them and retries at most once per backoff cap.
PERMANENT_ERRORS: tuple[type[DeviceSDKError], ...] = (
    CertificateRejectedError,
    NotAuthorizedError,
    ServerUntrustedError,
    ClockError,
    CredentialError,
    IdentityTimeoutError,
    ConnectionRefusedByServerError,
    SessionTakenOverError,
)

# MQTT 3.1.1 CONNACK return codes as paho 2.x reports them (MQTT 5 reason code values).
PAHO_CONNACK_CODES = {132: 1, 133: 2, 136: 3, 134: 4, 135: 5}

CONNACK_ACCEPTED = 0
CONNACK_UNSUPPORTED_PROTOCOL = 1
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_SERVER_UNAVAILABLE = 3
CONNACK_BAD_USERNAME_OR_PASSWORD = 4
CONNACK_NOT_AUTHORIZED = 5

#: CONNACK codes that may mean "the username (stored identity) names another device".
USERNAME_REFUSALS = frozenset({CONNACK_BAD_USERNAME_OR_PASSWORD, CONNACK_NOT_AUTHORIZED})


def connack_code(paho_value: int) -> int:
    """The MQTT 3.1.1 return code (0-5) for the value paho 2.x reports."""
    return PAHO_CONNACK_CODES.get(paho_value, paho_value)


class HintNames(NamedTuple):
    """How messages name the settings a person can change."""

    server_ca: str
    server_hostname: str
    no_identity: str


values.compare_by_type(HintNames)

#: An application using :class:`~device_sdk.client.DeviceClient`.
SDK_HINTS = HintNames("server_ca", "server_hostname", "expect_identity=False")
#: A person at ``iotx509 device connect``.
CLI_HINTS = HintNames("--server-ca", "--server-hostname", "--no-identity")


class Refusals(NamedTuple):
    """The errors of one client (its server, its certificate, its settings)."""

    host: str
    port: int
    server_hostname: str | None = None
    client_id: str = ""
    keepalive: int = 0
    cert_sn: str = ""
    hints: HintNames = SDK_HINTS

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    # --- TLS and the socket --------------------------------------------------------------------

    def tls(self, exc: BaseException, *, after_handshake: bool = False) -> ConnectionFailedError:
        """Translate an exception from connecting (or from the first read) into an SDK error;
        the original exception is kept as ``__cause__`` (as ``raise ... from`` would)."""
        error = self._tls(exc, after_handshake)
        error.__cause__ = exc
        return error

    def _tls(self, exc: BaseException, after_handshake: bool) -> ConnectionFailedError:
        host, port, where = self.host, self.port, self.where
        if isinstance(exc, ssl.SSLCertVerificationError):
            return self._server_untrusted(exc)
        if isinstance(exc, ssl.SSLError):
            # Set by OpenSSL-raised errors; an SSLError built elsewhere may carry it in the text.
            short = getattr(exc, "reason", None)
            reason = (short or "").upper()
            text = str(exc)
            if reason in CLIENT_CERT_REJECTED_REASONS or any(
                r.lower().replace("_", " ") in text.lower() for r in CLIENT_CERT_REJECTED_REASONS
            ):
                return self.certificate_rejected(short or text)
            if after_handshake and (
                isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError)
                or reason == "UNEXPECTED_EOF_WHILE_READING"
            ):
                return self.certificate_rejected("connection closed right after the handshake")
            return ConnectionFailedError(
                f"TLS with the server at {where} failed: {short or text}. Does the server speak "
                f"TLS 1.2 or newer on this port?",
                host=host,
                port=port,
            )
        if isinstance(exc, ConnectionRefusedError):
            return ConnectionFailedError(
                f"nothing accepts connections at {where} (connection refused); is the server "
                f"running and the port right?",
                host=host,
                port=port,
            )
        if isinstance(exc, TimeoutError | socket.timeout):
            return ConnectTimeoutError(
                f"connecting to {where} timed out ({exc or 'no answer'}); check the network, "
                f"host and port",
                host=host,
                port=port,
            )
        if isinstance(
            exc, ConnectionResetError | BrokenPipeError | ConnectionAbortedError | EOFError
        ):
            if after_handshake:
                return self.certificate_rejected(
                    "the connection was closed right after the TLS handshake"
                )
            return ConnectionFailedError(
                f"the server at {where} closed the connection during the TLS handshake ({exc}); "
                f"it may not accept this device's certificate or TLS version",
                host=host,
                port=port,
            )
        if isinstance(exc, socket.gaierror):
            return ConnectionFailedError(
                f"cannot resolve host {host!r}: {exc.strerror or exc}", host=host, port=port
            )
        if isinstance(exc, OSError):
            return ConnectionFailedError(
                f"cannot connect to {where}: {exc.strerror or exc}", host=host, port=port
            )
        return ConnectionFailedError(f"cannot connect to {where}: {exc}", host=host, port=port)

    def _server_untrusted(self, exc: ssl.SSLCertVerificationError) -> ServerUntrustedError:
        reason = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
        hint = f"Is {self.hints.server_ca} the CA that issued the server's certificate?"
        if "mismatch" in reason or "hostname" in reason.lower():
            expected = self.server_hostname or self.host
            hint = (
                f"The server's certificate does not name {expected!r}; connect by a name it "
                f"carries, or set {self.hints.server_hostname}."
            )
        elif "expired" in reason or "not yet valid" in reason:
            hint = (
                "The server certificate's dates do not fit the system clock: the clock may "
                "be wrong."
            )
        return ServerUntrustedError(
            f"the server at {self.where} could not be verified against the server CA "
            f"({reason}). {hint}",
            host=self.host,
            port=self.port,
        )

    def certificate_rejected(self, detail: str) -> CertificateRejectedError:
        return CertificateRejectedError(
            f"the server at {self.where} refused this device's certificate ({detail}). Is the "
            f"CA that issued it registered with the platform and active? Was the device "
            f"certificate issued by that CA (check the file name's CA SN)?",
            host=self.host,
            port=self.port,
        )

    # --- CONNACK -------------------------------------------------------------------------------

    def connack(self, code: int) -> DeviceSDKError:
        """The error for a refusing CONNACK (MQTT 3.1.1 return code 1-5 or another value)."""
        where, host, port = self.where, self.host, self.port
        if code == CONNACK_NOT_AUTHORIZED:
            return NotAuthorizedError(
                f"the server at {where} accepted the TLS handshake but refused the device "
                f"(CONNACK 5, not authorised): is this certificate's SN ({self.cert_sn}) "
                f"associated with a device, and is that device enabled?",
                host=host,
                port=port,
            )
        if code == CONNACK_BAD_USERNAME_OR_PASSWORD:
            return ConnectionRefusedByServerError(
                f"the server at {where} refused the username (CONNACK 4): the stored identity "
                f"does not match this certificate",
                code=code,
                host=host,
                port=port,
            )
        if code == CONNACK_IDENTIFIER_REJECTED:
            return ConnectionRefusedByServerError(
                f"the server at {where} rejected the client id {self.client_id!r} or the "
                f"keep-alive {self.keepalive} s (CONNACK 2, identifier rejected)",
                code=code,
                host=host,
                port=port,
            )
        if code == CONNACK_SERVER_UNAVAILABLE:
            return ConnectionFailedError(
                f"the server at {where} is unavailable (CONNACK 3); will retry",
                host=host,
                port=port,
            )
        if code == CONNACK_UNSUPPORTED_PROTOCOL:
            return ConnectionRefusedByServerError(
                f"the server at {where} does not accept MQTT 3.1.1 (CONNACK 1, unacceptable "
                f"protocol version)",
                code=code,
                host=host,
                port=port,
            )
        return ConnectionRefusedByServerError(
            f"the server at {where} refused the connection (CONNACK {code})",
            code=code,
            host=host,
            port=port,
        )

    # --- deadlines and what happens after CONNACK ----------------------------------------------

    def connack_timeout(self, timeout: float) -> ConnectTimeoutError:
        return ConnectTimeoutError(
            f"no CONNACK from {self.where} within {timeout:g} s after the TLS handshake; is "
            f"this an MQTT server?",
            host=self.host,
            port=self.port,
        )

    def identity_timeout(self, timeout: float) -> IdentityTimeoutError:
        return IdentityTimeoutError(
            f"connected to {self.where} but the platform did not send this device's identity "
            f"within {timeout:g} s; for a generic MQTT broker use {self.hints.no_identity}",
            host=self.host,
            port=self.port,
            timeout=timeout,
        )

    def connect_timeout(self, timeout: float, last: DeviceSDKError | None) -> ConnectTimeoutError:
        detail = f": {last}" if last else ""
        error = ConnectTimeoutError(
            f"could not connect to {self.where} within {timeout:g} s{detail}",
            host=self.host,
            port=self.port,
        )
        error.__cause__ = last
        return error

    def lost(self, cause: BaseException | None) -> ConnectionFailedError:
        """An accepted session ended: the socket closed or failed."""
        error = ConnectionFailedError(
            f"connection to {self.where} lost"
            + (f" ({cause})" if cause else " (closed by the server)"),
            host=self.host,
            port=self.port,
        )
        error.__cause__ = cause
        return error

    def taken_over(self, sessions: int, last: DeviceSDKError | None) -> SessionTakenOverError:
        error = SessionTakenOverError(
            f"the server at {self.where} closed this device's session {sessions} times in a "
            f"row soon after accepting it: another connection with the same certificate (SN "
            f"{self.cert_sn}, client id {self.client_id!r}) is most likely taking over the "
            f"session each time. Run one process per certificate; give each board its own "
            f"certificate. Slowing down reconnects to once per backoff cap.",
            sessions=sessions,
            host=self.host,
            port=self.port,
        )
        error.__cause__ = last
        return error


values.compare_by_type(Refusals)


def map_connect_error(
    exc: BaseException,
    host: str,
    port: int,
    *,
    after_handshake: bool = False,
    server_hostname: str | None = None,
) -> ConnectionFailedError:
    """:meth:`Refusals.tls` for a one-off mapping (no client at hand)."""
    return Refusals(host, port, server_hostname).tls(exc, after_handshake=after_handshake)


def is_permanent(error: DeviceSDKError | None) -> bool:
    """True for refusals that a quick retry cannot fix."""
    return isinstance(error, PERMANENT_ERRORS)

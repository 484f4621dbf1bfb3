"""A client of the platform's HTTP API (the reference server's, or a compatible one).

It serves the customer's console steps: the registration code, products, CA registration with
a verification certificate, association CSV uploads, and the cloud side of device messaging.
Standard library only (``urllib``), so it runs with the base install on a factory PC. The
``iotx509 platform`` commands, the fleet simulator and the demo all use this one client.
"""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from firmware_helpers.errors import FirmwareHelpersError

if TYPE_CHECKING:
    from firmware_helpers.pki import CertifiedKey

API_PREFIX = "/api/v1"


class PlatformAPIError(FirmwareHelpersError):
    """The platform answered with an error, or could not be reached.

    ``status`` is the HTTP status (0 when unreachable), ``code`` the platform's error code,
    ``rows`` the per-row errors of a rejected association CSV.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        code: str = "",
        rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.rows = list(rows)

    def __str__(self) -> str:
        text = super().__str__()
        if self.rows:
            shown = "\n".join(f"  row {r.get('row')}: {r.get('message')}" for r in self.rows)
            text = f"{text}\n{shown}"
        return text


@dataclass(frozen=True)
class UploadFile:
    filename: str
    content: bytes
    content_type: str = "application/octet-stream"


@dataclass(frozen=True)
class CaRegistration:
    """A CA registered with proof of possession: what the platform answered, and the proof.

    ``verification`` is the verification certificate (CN = ``registration_code``, signed by the
    CA's key) and its own key, for a caller that keeps them (the demo writes them to disk).
    """

    ca_sn: str
    subject: str
    registration_code: str
    verification: CertifiedKey
    answer: dict[str, Any]


@dataclass
class PlatformClient:
    """``PlatformClient("http://127.0.0.1:8080", token)``; every method returns parsed JSON."""

    base_url: str
    token: str
    timeout: float = 30.0
    _opener: urllib.request.OpenerDirector = field(
        default_factory=lambda: _build_opener(), repr=False
    )

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        if self.base_url.endswith(API_PREFIX):
            self.base_url = self.base_url[: -len(API_PREFIX)]
        host = urllib.parse.urlsplit(self.base_url).hostname or ""
        if host in ("localhost", "::1") or host.startswith("127."):
            # An HTTP proxy from the environment must not intercept a server on this machine.
            self._opener = _build_opener(urllib.request.ProxyHandler({}))

    # --- plumbing --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        files: Mapping[str, UploadFile] | None = None,
        fields: Mapping[str, str] | None = None,
        accept: str = "application/json",
    ) -> Any:
        url = f"{self.base_url}{API_PREFIX}{path}"
        headers = {"Authorization": f"Bearer {self.token}", "Accept": accept}
        data: bytes | None = None
        if files is not None or fields is not None:
            data, content_type = _multipart(fields or {}, files or {})
            headers["Content-Type"] = content_type
        elif json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                body = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            with exc:
                if 300 <= exc.code < 400:
                    raise _redirect_error(exc, url) from exc
                raise _api_error(exc, url) from exc
        except urllib.error.URLError as exc:
            raise PlatformAPIError(
                f"cannot reach the server at {self.base_url}: {exc.reason} (is 'iotx509 server "
                "run' running? set --server or IOTX509_SERVER)"
            ) from exc
        except (TimeoutError, ConnectionError) as exc:
            raise PlatformAPIError(f"the server at {self.base_url} did not answer: {exc}") from exc
        if "json" in ctype:
            return json.loads(body) if body else None
        return body.decode("utf-8")

    # --- console steps ---------------------------------------------------------------------

    def registration_code(self) -> str:
        return str(self.request("GET", "/registration-code")["registrationCode"])

    def endpoint(self) -> dict[str, Any]:
        """``{"mqtt": "mqtts://HOST:PORT", "serverCa": PEM}``: where devices connect."""
        return dict(self.request("GET", "/endpoint"))

    def create_product(
        self, name: str, *, auth_type: str = "x509", private_ca: bool = True, network: str = "mqtt"
    ) -> dict[str, Any]:
        body = {"name": name, "authType": auth_type, "privateCa": private_ca, "network": network}
        return dict(self.request("POST", "/products", json_body=body))

    def product(self, product_key: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/products/{_q(product_key)}"))

    def register_ca(
        self, name: str, ca_certificate: UploadFile, verification_certificate: UploadFile
    ) -> dict[str, Any]:
        return dict(
            self.request(
                "POST",
                "/ca-certificates",
                fields={"name": name},
                files={
                    "caCertificate": ca_certificate,
                    "verificationCertificate": verification_certificate,
                },
            )
        )

    def register_ca_with_proof(
        self, name: str, ca: CertifiedKey, *, ca_filename: str = "ca.cer"
    ) -> CaRegistration:
        """Register ``ca`` proving possession of its key: the one home of the console's flow.

        Reads the account's registration code, makes the verification certificate (CN = the
        code, signed by ``ca.key``) and uploads both. ``ca`` is checked first (a CA certificate,
        RSA, ``ca.key`` its private key), so a wrong key is refused here with
        :class:`~firmware_helpers.errors.InvalidCAError` naming the CA, and nothing is sent.
        The platform's own refusals (name, limits, a CA already registered) stay
        :class:`PlatformAPIError`.
        """
        # Imported here: the client itself needs only the standard library (see the top).
        from firmware_helpers.issuing import check_issuing_ca
        from firmware_helpers.pki import issue_verification_certificate

        subject = ca.certificate.subject.rfc4514_string()
        check_issuing_ca(
            ca.certificate,
            ca.key,
            source=f"'{subject}'",
            key_source=f"the key given for CA {name!r}",
        )
        code = self.registration_code()
        verification = issue_verification_certificate(ca, code)
        answer = self.register_ca(
            name,
            UploadFile(ca_filename, ca.cert_pem()),
            UploadFile("verificationCert.crt", verification.cert_pem()),
        )
        return CaRegistration(
            ca_sn=str(answer["caSn"]),
            subject=str(answer.get("subject", subject)),
            registration_code=code,
            verification=verification,
            answer=answer,
        )

    def ca_certificates(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/ca-certificates"))

    def ca_certificate(self, ca_sn: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/ca-certificates/{_q(ca_sn)}"))

    def set_ca_status(self, ca_sn: str, status: str) -> dict[str, Any]:
        return dict(
            self.request("PATCH", f"/ca-certificates/{_q(ca_sn)}", json_body={"status": status})
        )

    def delete_ca(self, ca_sn: str) -> None:
        self.request("DELETE", f"/ca-certificates/{_q(ca_sn)}")

    def association_template(self, ca_sn: str) -> str:
        return str(
            self.request(
                "GET",
                f"/ca-certificates/{_q(ca_sn)}/association-template",
                accept="text/csv, application/json",
            )
        )

    def associate(self, ca_sn: str, csv_file: UploadFile) -> int:
        result = self.request(
            "POST", f"/ca-certificates/{_q(ca_sn)}/associations", files={"file": csv_file}
        )
        return int(result["associated"])

    def associations(self, ca_sn: str) -> list[dict[str, Any]]:
        return list(self.request("GET", f"/ca-certificates/{_q(ca_sn)}/associations"))

    def delete_association(self, ca_sn: str, cert_sn: str) -> None:
        self.request("DELETE", f"/ca-certificates/{_q(ca_sn)}/associations/{_q(cert_sn)}")

    def device(self, product_key: str, device_name: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/devices/{_q(product_key)}/{_q(device_name)}"))

    def set_device_status(self, product_key: str, device_name: str, status: str) -> dict[str, Any]:
        return dict(
            self.request(
                "PATCH",
                f"/devices/{_q(product_key)}/{_q(device_name)}",
                json_body={"status": status},
            )
        )

    def send_message(
        self, product_key: str, device_name: str, topic: str, payload: str, qos: int = 0
    ) -> bool:
        """Deliver a cloud-to-device message; True when the device's session took it."""
        result = self.request(
            "POST",
            f"/devices/{_q(product_key)}/{_q(device_name)}/messages",
            json_body={"topic": topic, "payload": payload, "qos": qos},
        )
        return bool(result.get("delivered", True)) if isinstance(result, dict) else True

    def device_messages(
        self, product_key: str, device_name: str, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The most recent messages the device published (newest last)."""
        return list(
            self.request(
                "GET", f"/devices/{_q(product_key)}/{_q(device_name)}/messages?limit={limit}"
            )
        )

    # --- certificate renewal (the signer's side, docs/renewal.md) --------------------------

    def renewal_requests(self, ca_sn: str, limit: int = 50) -> list[dict[str, Any]]:
        """Renewal requests waiting for this CA's signer, oldest first."""
        return list(
            self.request(
                "GET", f"/ca-certificates/{_q(ca_sn)}/renewals?status=pending&limit={int(limit)}"
            )
        )

    def post_renewal_certificate(
        self, ca_sn: str, request_id: str, certificate_pem: str
    ) -> dict[str, Any]:
        """Answer a renewal request with the issued certificate (PEM, the leaf)."""
        return dict(
            self.request(
                "POST",
                f"/ca-certificates/{_q(ca_sn)}/renewals/{_q(request_id)}/certificate",
                json_body={"certificate": certificate_pem},
            )
        )

    def refuse_renewal(self, ca_sn: str, request_id: str, reason: str) -> dict[str, Any]:
        """Refuse a renewal request; the device is told ``reason``."""
        return dict(
            self.request(
                "POST",
                f"/ca-certificates/{_q(ca_sn)}/renewals/{_q(request_id)}/refusal",
                json_body={"reason": reason},
            )
        )

    def expiring_devices(self, days: float, limit: int = 1000) -> list[dict[str, Any]]:
        """Devices whose current certificate expires within ``days`` days, soonest first."""
        query = f"expiringWithinDays={days:g}&limit={int(limit)}"
        return list(self.request("GET", f"/devices?{query}"))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would send the bearer token on to wherever it points.

    Following only same-origin redirects would be safe too, but the API has none, so any
    redirect is a misconfigured ``--server`` (or a hostile answer): it becomes an error that
    names the ``Location`` instead.
    """

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        return None


def _build_opener(*handlers: urllib.request.BaseHandler) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(*handlers, _NoRedirects())


def _redirect_error(exc: urllib.error.HTTPError, url: str) -> PlatformAPIError:
    location = exc.headers.get("Location") if exc.headers is not None else None
    return PlatformAPIError(
        f"the server at {url} answered HTTP {exc.code} redirecting to "
        f"{location or '(no Location)'}; the client does not follow redirects, so the API token "
        "is never sent to another address: give --server (or IOTX509_SERVER) the address the "
        "API really has",
        status=exc.code,
        code="redirect",
    )


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")


def _api_error(exc: urllib.error.HTTPError, url: str) -> PlatformAPIError:
    """The server's own message (and every bad CSV row); its HTTP status and code as fields."""
    raw = exc.read()
    try:
        error = json.loads(raw)["error"]
        return PlatformAPIError(
            str(error["message"]),
            status=exc.code,
            code=str(error.get("code", "")),
            rows=error.get("rows") or (),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        text = raw.decode("utf-8", "replace").strip()[:200]
        return PlatformAPIError(
            f"the server at {url} answered HTTP {exc.code}: {text or '(no body)'}",
            status=exc.code,
        )


def _multipart(fields: Mapping[str, str], files: Mapping[str, UploadFile]) -> tuple[bytes, str]:
    boundary = "iotx509-" + secrets.token_hex(16)
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            + value.encode()
            + b"\r\n"
        )
    for name, upload in files.items():
        filename = upload.filename.replace('"', "")
        parts.append(
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
                f'filename="{filename}"\r\nContent-Type: {upload.content_type}\r\n\r\n'
            ).encode()
            + upload.content
            + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"

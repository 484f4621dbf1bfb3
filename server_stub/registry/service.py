"""The registry: every console step of the platform, with its rules, over a :class:`Store`.

It is also the MQTT endpoint's :class:`~server_stub.ports.DeviceDirectory`. Every method is
scoped to one account: another account's products, CAs and devices do not exist for it (404).
Errors from the shared certificate model are mapped to :mod:`server_stub.errors` here.

Why it is about 500 lines: it is the platform's console, one method per console step (codes,
products, CAs, associations, devices, authentication), each a few lines over the rules that live
elsewhere (:mod:`~server_stub.registry.products`, :mod:`~server_stub.registry.cas`,
:mod:`~server_stub.registry.associations`, :mod:`~server_stub.registry.directory`). Renewal has
its own module (:mod:`~server_stub.registry.renewals`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from device_sdk.certificate import as_model
from device_sdk.certs import (
    certificate_sn,
    check_validity,
    device_certificate_problem,
    is_rsa,
    public_key_spki,
)
from device_sdk.errors import ClockError, InvalidNameError, InvalidSerialNumberError
from device_sdk.naming import validate_device_name, validate_product_key
from device_sdk.serials import normalize_sn
from server_stub.errors import (
    AuthenticationError,
    CaLimitError,
    ConflictError,
    DuplicateCaError,
    InvalidFieldError,
    NotFoundError,
    ProductNotEligibleError,
)
from server_stub.ports import (
    AuthDecision,
    AuthenticatedDevice,
    AuthRefused,
    IssuerRefused,
    IssuingCa,
)
from server_stub.registry import accounts as acct
from server_stub.registry.associations import check_bindings, read_associations
from server_stub.registry.cas import (
    CA_STATUSES,
    MAX_CAS_PER_ACCOUNT,
    check_ca_upload,
    colon_fingerprint,
)
from server_stub.registry.directory import CaIndex
from server_stub.registry.products import (
    eligibility_problems,
    new_product_key,
    takes_private_ca_devices,
    validate_product_settings,
)
from server_stub.store.base import (
    AccountRecord,
    AssociationRecord,
    CaRecord,
    DeviceListRow,
    DeviceQuery,
    DeviceRecord,
    ProductRecord,
    Store,
)

log = logging.getLogger(__name__)

DEFAULT_ACCOUNT = "default"
DEVICE_STATUSES = ("enabled", "disabled")
MAX_PAGE_SIZE = 100
MAX_FILTER_CHARS = 64


class Registry:
    """Accounts, products, CA certificates, devices and associations, with the platform's rules."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._generation = 1
        self._gen_lock = threading.Lock()
        self._index = CaIndex(0)
        self._index_lock = threading.Lock()

    # --- accounts -------------------------------------------------------------------------------

    def create_account(self, name: str) -> tuple[AccountRecord, str]:
        """A new account and its API token (shown once; only its hash is stored)."""
        if not acct.ACCOUNT_NAME_RE.fullmatch(name):
            raise InvalidFieldError(
                f"account name {name!r} must be 1-64 characters of letters, digits and _.@-"
            )
        token = acct.new_token()
        record = self.store.insert_account(
            name, acct.hash_token(token), acct.new_registration_code(), self._clock()
        )
        log.info("created account %s", name)
        return record, token

    def account(self, name: str) -> AccountRecord:
        record = self.store.account_by_name(name)
        if record is None:
            raise NotFoundError(f"no account named {name!r}")
        return record

    def rotate_token(self, name: str) -> str:
        record = self.account(name)
        token = acct.new_token()
        self.store.set_account_token(record.id, acct.hash_token(token))
        return token

    def account_for_token(self, token: str | None) -> AccountRecord:
        if not token:
            raise AuthenticationError(
                "missing API token: send the header 'Authorization: Bearer <token>'"
            )
        found = self.store.account_by_token_hash(acct.hash_token(token))
        if found is None or not acct.token_matches(token, found[1]):
            raise AuthenticationError("the API token is not valid for any account")
        return found[0]

    def registration_code(self, account: AccountRecord) -> str:
        record = self.store.account_by_name(account.name)
        return record.registration_code if record else account.registration_code

    def rotate_registration_code(self, account: AccountRecord) -> str:
        code = acct.new_registration_code()
        self.store.set_registration_code(account.id, code)
        return code

    # --- products -------------------------------------------------------------------------------

    def create_product(
        self,
        account: AccountRecord,
        *,
        name: str,
        auth_type: str = "x509",
        private_ca: bool = True,
        network: str = "mqtt",
    ) -> ProductRecord:
        clean = validate_product_settings(name, auth_type, private_ca, network)
        with self.store.atomic():
            key = new_product_key()
            while self.store.product_key_exists(key):
                key = new_product_key()
            return self.store.insert_product(
                account.id, key, clean, auth_type, private_ca, network, self._clock()
            )

    def product(self, account: AccountRecord, product_key: str) -> ProductRecord:
        record = self.store.product(account.id, product_key)
        if record is None:
            raise NotFoundError(f"no product with ProductKey {product_key!r} in this account")
        return record

    def list_products(self, account: AccountRecord) -> list[ProductRecord]:
        return self.store.list_products(account.id)

    # --- CA certificates ------------------------------------------------------------------------

    def register_ca(
        self,
        account: AccountRecord,
        *,
        name: str,
        ca_data: bytes,
        verification_data: bytes,
        ca_filename: str | None = None,
        verification_filename: str | None = None,
        now: datetime | None = None,
    ) -> CaRecord:
        """Check proof of possession and the account rules; store the CA as ``active``."""
        checked = check_ca_upload(
            name=name,
            ca_data=ca_data,
            verification_data=verification_data,
            registration_code=self.registration_code(account),
            ca_filename=ca_filename,
            verification_filename=verification_filename,
            now=now,
        )
        cert = checked.certificate
        with self.store.atomic():
            existing = self.store.ca_by_fingerprint(checked.fingerprint)
            if existing is not None:
                where = (
                    f"in this account as {existing.name!r} (caSn {existing.ca_sn})"
                    if existing.account_id == account.id
                    else "by another account"
                )
                raise DuplicateCaError(
                    "this CA certificate (SHA-256 fingerprint "
                    f"{colon_fingerprint(checked.fingerprint)}) is already registered {where}; "
                    "the same CA certificate cannot be registered twice"
                )
            self._refuse_registered_key(account, cert)
            count = self.store.count_cas(account.id)
            if count >= MAX_CAS_PER_ACCOUNT:
                raise CaLimitError(
                    f"this account already has {count} CA certificates, the maximum is "
                    f"{MAX_CAS_PER_ACCOUNT}; delete one first"
                )
            same_sn = self.store.ca(account.id, checked.ca_sn)
            if same_sn is not None:
                raise ConflictError(
                    f"another CA certificate with serial number {checked.ca_sn} is already "
                    f"registered in this account as {same_sn.name!r}; caSn names a CA in file "
                    "names and the API, so it must be unique per account"
                )
            record = self.store.insert_ca(
                account.id,
                checked.ca_sn,
                checked.name,
                checked.subject,
                checked.fingerprint,
                cert.public_bytes(Encoding.DER),
                cert.not_valid_before_utc.timestamp(),
                cert.not_valid_after_utc.timestamp(),
                self._clock(),
            )
        self._bump()
        log.info("account %s registered CA %s (%s)", account.name, record.ca_sn, record.subject)
        return record

    def _refuse_registered_key(self, account: AccountRecord, cert: x509.Certificate) -> None:
        """One registered CA per public key, across all accounts (inside the transaction).

        Two registered CAs sharing a key would make every certificate of that key ambiguous (the
        endpoint refuses those), so one account's upload could switch off another's devices. The
        message names the other account's CA only when it is this account's own.
        """
        spki = public_key_spki(cert)
        for other in self.store.all_cas():
            if public_key_spki(x509.load_der_x509_certificate(other.der)) != spki:
                continue
            where = (
                f" in this account as {other.name!r} (caSn {other.ca_sn})"
                if other.account_id == account.id
                else ""
            )
            raise DuplicateCaError(
                f"this CA certificate's public key is already registered{where}; a CA key can be "
                "registered only once (issue the CA certificate with a new key pair)"
            )

    def ca(self, account: AccountRecord, ca_sn: str) -> CaRecord:
        try:
            sn = normalize_sn(ca_sn)
        except InvalidSerialNumberError as exc:
            raise NotFoundError(f"no CA certificate with caSn {ca_sn!r}: {exc}") from exc
        record = self.store.ca(account.id, sn)
        if record is None:
            raise NotFoundError(f"no CA certificate with caSn {sn} in this account")
        return record

    def list_cas(self, account: AccountRecord) -> list[CaRecord]:
        return self.store.list_cas(account.id)

    def set_ca_status(self, account: AccountRecord, ca_sn: str, status: str) -> CaRecord:
        if status not in CA_STATUSES:
            raise InvalidFieldError(f"CA status {status!r} is not one of {', '.join(CA_STATUSES)}")
        record = self.ca(account, ca_sn)
        self.store.set_ca_status(record.id, status)
        self._bump()
        return self.ca(account, ca_sn)

    def delete_ca(self, account: AccountRecord, ca_sn: str) -> None:
        """Delete a CA and its associations (its devices stay, unbound)."""
        record = self.ca(account, ca_sn)
        self.store.delete_ca(record.id)
        self._bump()

    # --- associations ---------------------------------------------------------------------------

    def associate(self, account: AccountRecord, ca_sn: str, data: bytes) -> int:
        """Check a whole association CSV, then save it in one transaction; return its row count."""
        ca = self.ca(account, ca_sn)
        parsed = read_associations(data)
        if parsed.product_key is None:
            parsed.raise_if_errors()
        assert parsed.product_key is not None
        product = self.store.product(account.id, parsed.product_key)
        if product is None:
            raise ProductNotEligibleError(
                f"product {parsed.product_key!r} (ProductKey of the file) does not exist in this "
                "account"
            )
        problems = eligibility_problems(product)
        if problems:
            raise ProductNotEligibleError(
                f"product {product.product_key} cannot take private-CA devices: "
                f"{'; '.join(problems)}"
            )
        sns = [row.cert_sn for row in parsed.rows]
        names = [row.device_name for row in parsed.rows]
        now = self._clock()
        with self.store.atomic():
            new_rows, binding_errors = check_bindings(
                parsed,
                ca.id,
                self.store.sn_bindings(account.id, sns),
                self.store.device_bindings(product.id, names),
            )
            parsed.raise_if_errors(binding_errors)
            if new_rows:
                existing = self.store.device_bindings(product.id, [r.device_name for r in new_rows])
                missing = [r.device_name for r in new_rows if r.device_name not in existing]
                ids = {name: b.device_id for name, b in existing.items()}
                if missing:
                    ids.update(self.store.insert_devices(account.id, product.id, missing, now))
                self.store.insert_associations(
                    account.id, ca.id, ((ids[r.device_name], r.cert_sn) for r in new_rows), now
                )
        if new_rows:
            self._bump()
        log.info(
            "account %s associated %d rows (%d new) with CA %s",
            account.name,
            len(parsed.rows),
            len(new_rows),
            ca.ca_sn,
        )
        return parsed.total

    def list_associations(self, account: AccountRecord, ca_sn: str) -> list[AssociationRecord]:
        return self.store.list_associations(self.ca(account, ca_sn).id)

    def delete_association(self, account: AccountRecord, ca_sn: str, cert_sn: str) -> None:
        ca = self.ca(account, ca_sn)
        try:
            sn = normalize_sn(cert_sn)
        except InvalidSerialNumberError as exc:
            raise NotFoundError(f"no association with CertSN {cert_sn!r}: {exc}") from exc
        if not self.store.delete_association(ca.id, sn):
            raise NotFoundError(f"no association with CertSN {sn} under CA {ca.ca_sn}")
        self._bump()

    # --- devices --------------------------------------------------------------------------------

    def device(self, account: AccountRecord, product_key: str, device_name: str) -> DeviceRecord:
        record = self.store.device(account.id, product_key, device_name)
        if record is None:
            raise NotFoundError(f"no device {product_key}/{device_name} in this account")
        return record

    def set_device_status(
        self, account: AccountRecord, product_key: str, device_name: str, status: str
    ) -> DeviceRecord:
        if status not in DEVICE_STATUSES:
            raise InvalidFieldError(
                f"device status {status!r} is not one of {', '.join(DEVICE_STATUSES)}"
            )
        record = self.device(account, product_key, device_name)
        self.store.set_device_status(record.id, status)
        self._bump()
        return self.device(account, product_key, device_name)

    def list_devices(
        self,
        account: AccountRecord,
        *,
        text: str | None = None,
        product_key: str | None = None,
        status: str | None = None,
        keys: tuple[str, ...] | None = None,
        exclude_keys: bool = False,
        page: int = 1,
        page_size: int = 50,
    ) -> tuple[int, list[DeviceListRow]]:
        """One page of the account's devices, filtered and counted by the store (not in memory)."""
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidFieldError(f"pageSize {page_size} must be 1..{MAX_PAGE_SIZE}")
        if page < 1:
            raise InvalidFieldError(f"page {page} must be 1 or more")
        if text is not None and len(text) > MAX_FILTER_CHARS:
            raise InvalidFieldError(f"the filter is longer than {MAX_FILTER_CHARS} characters")
        if status is not None and status not in DEVICE_STATUSES:
            raise InvalidFieldError(
                f"device status {status!r} is not one of {', '.join(DEVICE_STATUSES)}"
            )
        query = DeviceQuery(
            text=text or None,
            product_key=product_key or None,
            status=status,
            keys=keys,
            exclude_keys=exclude_keys,
            limit=page_size,
            offset=(page - 1) * page_size,
        )
        return self.store.list_devices(account.id, query)

    # --- DeviceDirectory (the MQTT endpoint's view) ---------------------------------------------

    @property
    def trust_generation(self) -> int:
        return self._generation

    def _bump(self) -> None:
        with self._gen_lock:
            self._generation += 1

    def _current_index(self) -> CaIndex:
        index = self._index
        generation = self._generation
        if index.generation == generation:
            return index
        with self._index_lock:
            if self._index.generation != generation:
                self._index = CaIndex.build(generation, self.store.all_cas())
            return self._index

    def active_ca_certificates(self) -> Sequence[x509.Certificate]:
        return self._current_index().certificates

    def trust_index(self) -> CaIndex:
        return self._current_index()

    def authenticate(self, leaf: x509.Certificate, issuer: IssuingCa | None = None) -> AuthDecision:
        """Apply every device rule to ``leaf`` under the CA whose key verifies it.

        ``issuer`` is the attribution the TLS handshake made (one signature check per candidate
        CA, see :class:`CaIndex`); without it the current index attributes ``leaf`` here.
        """
        # Given an attribution, the handshake already refused CA:TRUE leaves and unusable SNs.
        problem = None if issuer is not None else device_certificate_problem(leaf)
        if problem is not None:
            return AuthRefused(reason=problem, cert_sn="-", issuer=leaf.issuer.rfc4514_string())
        # the model once (the rules below read it; another thread may have read another since)
        model = as_model(leaf)
        cert_sn = certificate_sn(model)

        def refuse(reason: str) -> AuthRefused:
            # the issuer's name only for the log line of a refusal: an acceptance never shows it
            return AuthRefused(reason=reason, cert_sn=cert_sn, issuer=leaf.issuer.rfc4514_string())

        index = self._current_index()
        if issuer is None:
            found = index.attribute(leaf)
            if isinstance(found, IssuerRefused):
                return refuse(found.reason)
            issuer = found
        ca = index.by_id.get(issuer.ca_id)
        if ca is None:
            return refuse(f"CA {issuer.ca_sn} was deleted after the TLS handshake")
        if not ca.active:
            return refuse(f"CA {ca.ca_sn} is disabled")
        if not is_rsa(model):
            return refuse("the device certificate's key is not RSA; only RSA is supported")
        # The handshake refuses a certificate out of its dates, but a resumed TLS session skips
        # that check (its ticket may outlive the certificate), and CONNECT comes later than the
        # handshake: the registry's clock decides here, for every connection.
        try:
            check_validity(model, now=datetime.fromtimestamp(self._clock(), UTC))
        except ClockError as exc:
            return refuse(_out_of_dates(exc))
        row = self.store.auth_row(ca.ca_id, cert_sn)
        if row is None:
            return refuse(f"certificate SN {cert_sn} is not associated with CA {ca.ca_sn}")
        who = f"{row.product_key}/{row.device_name}"
        if row.device_status != "enabled":
            return refuse(f"device {who} is {row.device_status}")
        problems = eligibility_problems(row)
        if problems:
            return refuse(
                f"product {row.product_key} cannot take private-CA devices: {'; '.join(problems)}"
            )
        return AuthenticatedDevice(
            account_id=row.account_id,
            product_key=row.product_key,
            device_name=row.device_name,
            ca_sn=ca.ca_sn,
            cert_sn=cert_sn,
        )

    def is_current(self, device: AuthenticatedDevice) -> bool:
        ca = self._current_index().by_account_sn.get((device.account_id, device.ca_sn))
        if ca is None or not ca.active:
            return False
        row = self.store.auth_row(ca.ca_id, device.cert_sn)
        return (
            row is not None
            and row.product_key == device.product_key
            and row.device_name == device.device_name
            and row.device_status == "enabled"
            and takes_private_ca_devices(row)
        )


def _out_of_dates(exc: ClockError) -> str:
    """The log reason for a device certificate out of its validity window, in the server's
    words (the SDK's message addresses a device owner and its board's clock)."""
    state = "has expired" if exc.expired else "is not yet valid"
    return (
        f"device certificate {state}: valid from {exc.not_before:%Y-%m-%d %H:%M:%S}Z to "
        f"{exc.not_after:%Y-%m-%d %H:%M:%S}Z, the server's clock says {exc.now:%Y-%m-%d %H:%M:%S}Z"
    )


def check_device_path(product_key: str, device_name: str) -> None:
    """Refuse malformed path parts with the naming rules' own messages (400, not 404)."""
    try:
        validate_product_key(product_key)
        validate_device_name(device_name)
    except InvalidNameError as exc:
        raise InvalidFieldError(str(exc)) from exc

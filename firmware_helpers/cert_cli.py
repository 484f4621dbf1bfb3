"""``iotx509 ca ...`` and ``iotx509 certs ...``.

Only the standard library and dependency-free modules (the command tree, the factory defaults)
are imported at module level; the handlers import the engine.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import TextIO

from device_sdk.cli_support import CommandTree
from firmware_helpers.defaults import ALLOWED_KEY_SIZES, DEFAULT_CERT_DAYS, DEFAULT_KEY_SIZE

#: Registration codes as the reference server (and the modelled platform) show them.
CODE_RE = re.compile(r"[0-9a-f]{64}")
#: RFC 5280's upper bound for a Common Name.
MAX_CN_LENGTH = 64


def register(tree: CommandTree) -> None:
    """Add ``ca create``, ``ca verification-cert``, ``ca signer``, ``certs issue`` and
    ``certs export``."""
    ca = tree.group("ca", help="make a private CA and its proof-of-possession certificate")
    certs = tree.group("certs", help="issue device certificates and export them for firmware")

    p = ca.add_parser(
        "create",
        help="create a private RSA CA: ca.cer and ca.key",
        description="Create a self-signed RSA CA (CA=true, keyCertSign) for "
        "testing and small deployments: DIR/ca.cer and DIR/ca.key (0600).",
    )
    p.add_argument("--cn", required=True, help="the CA's Common Name")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--key-size", type=int, default=DEFAULT_KEY_SIZE, choices=ALLOWED_KEY_SIZES)
    p.add_argument(
        "--days", type=_positive, default=DEFAULT_CERT_DAYS, help="validity (default %(default)s)"
    )
    p.add_argument("--force", action="store_true", help="overwrite existing ca.cer / ca.key")
    p.set_defaults(handler=cmd_ca_create)

    p = ca.add_parser(
        "verification-cert",
        help="make the verification certificate for CA registration",
        description="What the documented 'openssl genrsa' / 'req' / 'x509 -req -sha512' steps "
        "make, in one command: DIR/verificationCert.crt (CN = registration code, signed by the "
        "CA key) and DIR/verificationCert.key.",
    )
    p.add_argument("--ca", required=True, type=Path, help="the CA certificate")
    p.add_argument("--ca-key", required=True, type=Path, help="the CA's private key")
    p.add_argument("--code", required=True, help="the registration code the platform shows")
    p.add_argument("--out", required=True, type=Path, metavar="DIR")
    p.add_argument("--days", type=_positive, default=300)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(handler=cmd_verification_cert)

    p = ca.add_parser(
        "signer",
        help="answer the platform's certificate renewal requests with this CA (docs/renewal.md)",
        description="Run where the CA key lives: poll the platform's HTTP API for renewal "
        "requests of this CA, check each CSR (possession, RSA >= 2048, exponent 65537, subject "
        "empty or CN=DeviceName), issue the certificate (SN recorded in the ledger first) and "
        "post it; refuse the others with the reason. Ctrl-C stops it.",
    )
    p.add_argument("--ca", required=True, type=Path, help="the CA certificate")
    p.add_argument("--ca-key", required=True, type=Path, help="the CA's private key")
    p.add_argument("--server", default=None, help="the platform's HTTP URL (env IOTX509_SERVER)")
    p.add_argument("--token", default=None, help="the account's API token (env IOTX509_TOKEN)")
    p.add_argument(
        "--once", action="store_true", help="answer what waits now, then exit (scripts, tests)"
    )
    p.add_argument(
        "--days",
        type=_positive,
        default=None,
        help="validity of renewed certificates (default: signer.DEFAULT_RENEWAL_DAYS, 365)",
    )
    p.add_argument(
        "--ledger",
        type=Path,
        default=None,
        help="the CA's SN ledger (default: sn-ledger.jsonl beside --ca-key)",
    )
    p.add_argument("--out", type=Path, default=None, metavar="DIR", help="also keep each .cer here")
    p.add_argument("--interval", type=float, default=None, help="seconds between polls (5)")
    p.add_argument(
        "--parallel", type=_positive, default=None, help="certificates posted at once (4)"
    )
    p.set_defaults(handler=cmd_ca_signer)

    p = certs.add_parser(
        "issue",
        help="issue one RSA key and certificate per device",
        description="Issue [PK]_[DN]_[CA_SN].cer/.key pairs and the association CSV(s). "
        "Re-running the same command resumes an interrupted run.",
    )
    p.add_argument("--ca", required=True, type=Path, help="the CA certificate (PEM or DER)")
    p.add_argument("--ca-key", required=True, type=Path, help="the CA's private key")
    p.add_argument("--product-key", required=True, help="the product's ProductKey")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument(
        "--device-name", action="append", metavar="DN", help="a device name (repeatable)"
    )
    names.add_argument(
        "--names-file",
        type=Path,
        metavar="F",
        help="one device name per line ('#' comments and blank lines ignored)",
    )
    names.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="N devices named PREFIX0001 ... (at least 4 digits, more if N > 9999)",
    )
    p.add_argument("--prefix", help="name prefix for --count")
    p.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DIR",
        help="output directory (0700), one per product and CA",
    )
    p.add_argument(
        "--days", type=_positive, default=DEFAULT_CERT_DAYS, help="validity (default %(default)s)"
    )
    p.add_argument("--key-size", type=int, default=DEFAULT_KEY_SIZE, choices=ALLOWED_KEY_SIZES)
    p.add_argument(
        "--jobs", type=_positive, default=None, help="key generation processes (default: all cores)"
    )
    p.add_argument(
        "--ledger", type=Path, default=None, help="SN ledger file (default: DIR/sn-ledger.jsonl)"
    )
    p.add_argument(
        "--progress", action="store_true", help="show progress even when stderr is not a terminal"
    )
    p.set_defaults(handler=cmd_certs_issue)

    p = certs.add_parser(
        "export",
        help="write credentials as a C header or a binary blob for firmware",
        description="c-header: C string constants; tlv: the credential blob documented in "
        "docs/credential-blob.md. The output holds the private key and is written 0600.",
    )
    p.add_argument("--format", required=True, choices=("c-header", "tlv"))
    p.add_argument("--cert", required=True, type=Path)
    p.add_argument("--key", required=True, type=Path)
    p.add_argument("--server-ca", type=Path, default=None)
    p.add_argument("--out", required=True, type=Path, metavar="FILE")
    p.add_argument(
        "--align",
        type=int,
        default=16,
        help="tlv: pad the blob with 0xFF to a multiple of this (power of two)",
    )
    p.add_argument("--symbol-prefix", default="IOTX509", help="c-header: prefix of the names")
    p.add_argument("--force", action="store_true", help="overwrite FILE")
    p.set_defaults(handler=cmd_certs_export)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _refuse_existing(paths: list[Path], force: bool) -> None:
    from firmware_helpers.errors import OutputExistsError

    existing = [p for p in paths if p.exists()]
    if existing and not force:
        raise OutputExistsError(
            f"{', '.join(map(str, existing))} already exist(s); refusing to overwrite "
            "(give --force to replace)",
            path=str(existing[0]),
        )


# --- ca ----------------------------------------------------------------------------------------


def cmd_ca_create(args: argparse.Namespace) -> int:
    from firmware_helpers.errors import InvalidInputError
    from firmware_helpers.issuing import prepare_output_dir
    from firmware_helpers.pki import create_ca

    cn = args.cn.strip()
    if not cn or len(cn) > MAX_CN_LENGTH:
        raise InvalidInputError(f"--cn must be 1-{MAX_CN_LENGTH} characters, got {args.cn!r}")
    cert_path, key_path = args.out / "ca.cer", args.out / "ca.key"
    _refuse_existing([cert_path, key_path], args.force)
    prepare_output_dir(args.out)
    ca = create_ca(cn, key_size=args.key_size, days=args.days)
    ca.write(cert_path, key_path)
    print(f"CA '{cn}' (SN {ca.sn}, RSA-{args.key_size}, {args.days} days)")
    print(f"  certificate: {cert_path}")
    print(f"  private key: {key_path} (0600)")
    return 0


def cmd_ca_signer(args: argparse.Namespace) -> int:
    import signal
    import threading

    from device_sdk.cli_support import env_default
    from firmware_helpers.issuing import load_issuing_ca, prepare_output_dir
    from firmware_helpers.platform_client import PlatformAPIError, PlatformClient
    from firmware_helpers.signer import (
        DEFAULT_INTERVAL,
        DEFAULT_PARALLEL,
        DEFAULT_RENEWAL_DAYS,
        RoundReport,
        Signer,
        default_ledger,
    )

    server = args.server or env_default("IOTX509_SERVER") or "http://127.0.0.1:8080"
    token = args.token or env_default("IOTX509_TOKEN")
    if not token:
        raise PlatformAPIError("no API token: pass --token or set IOTX509_TOKEN")
    ca = load_issuing_ca(args.ca, args.ca_key)
    if args.out is not None:
        prepare_output_dir(args.out)
    signer = Signer(
        PlatformClient(server, token),
        ca,
        ledger_path=args.ledger or default_ledger(args.ca_key),
        days=args.days or DEFAULT_RENEWAL_DAYS,
        out_dir=args.out,
        parallel=args.parallel or DEFAULT_PARALLEL,
    )
    signer.check_registered()

    def show(report: RoundReport) -> None:
        for a in report.answers:
            detail = f"SN {a.cert_sn}" if a.status == "issued" else a.reason
            print(f"{a.status:<8} {a.product_key}/{a.device_name} {a.request_id}  {detail}")
        sys.stdout.flush()

    if args.once:
        report = signer.run_once()
        show(report)
        print(
            f"issued {report.count('issued')}, refused {report.count('refused')}, "
            f"skipped {report.count('skipped')}",
            file=sys.stderr,
        )
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"signer for CA {ca.sn} polling {server} (Ctrl-C stops)", file=sys.stderr, flush=True)
    try:
        interval = DEFAULT_INTERVAL if args.interval is None else args.interval
        signer.serve(stop, interval=interval, on_round=show)
    except KeyboardInterrupt:
        pass
    return 0


def check_registration_code(code: str, *, warn: TextIO | None = None) -> str:
    """Refuse what cannot be a code (empty, whitespace, too long); warn on an unusual shape."""
    from firmware_helpers.errors import InvalidInputError

    if not code:
        raise InvalidInputError("the registration code is empty")
    if any(ch.isspace() for ch in code):
        raise InvalidInputError(
            f"the registration code {code!r} contains whitespace; copy it again without spaces "
            "or line breaks"
        )
    if not code.isprintable() or not code.isascii():
        raise InvalidInputError(f"the registration code {code!r} contains unusual characters")
    if len(code) > MAX_CN_LENGTH:
        raise InvalidInputError(
            f"the registration code is {len(code)} characters; a Common Name holds at most "
            f"{MAX_CN_LENGTH}"
        )
    if not CODE_RE.fullmatch(code) and warn is not None:
        hint = (
            "it has upper-case letters; the code is compared exactly"
            if CODE_RE.fullmatch(code.lower())
            else f"it is {len(code)} characters"
        )
        print(
            f"warning: registration codes are usually 64 lower-case hex characters; {hint}. "
            "The certificate is made with the code exactly as given.",
            file=warn,
        )
    return code


def cmd_verification_cert(args: argparse.Namespace) -> int:
    from firmware_helpers.issuing import load_issuing_ca, prepare_output_dir
    from firmware_helpers.pki import issue_verification_certificate

    code = check_registration_code(args.code, warn=sys.stderr)
    ca = load_issuing_ca(args.ca, args.ca_key)
    cert_path = args.out / "verificationCert.crt"
    key_path = args.out / "verificationCert.key"
    _refuse_existing([cert_path, key_path], args.force)
    prepare_output_dir(args.out)
    pair = issue_verification_certificate(ca, code, days=args.days)
    pair.write(cert_path, key_path)
    print(f"verification certificate (CN={code}, SN {pair.sn}) signed by CA SN {ca.sn}")
    print(f"  certificate: {cert_path}  <- upload this with the CA certificate")
    print(f"  private key: {key_path} (0600)")
    return 0


# --- certs issue -------------------------------------------------------------------------------


class ProgressLine:
    """``  123/1000  12.3 keys/s  ETA 1m11s`` on one rewritten stderr line."""

    def __init__(self, stream: TextIO, *, interval: float = 0.2) -> None:
        self.stream = stream
        self.interval = interval
        self.started = time.monotonic()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done not in (0, total) and now - self._last < self.interval:
            return
        self._last = now
        elapsed = now - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = _duration((total - done) / rate) if rate > 0 else "--"
        width = len(str(total))
        self.stream.write(f"\r  {done:>{width}}/{total}  {rate:6.1f} keys/s  ETA {eta:>7}")
        if done == total:
            self.stream.write("\n")
        self.stream.flush()


def _duration(value: float) -> str:
    seconds = round(value)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_certs_issue(args: argparse.Namespace) -> int:
    from firmware_helpers.errors import InvalidInputError
    from firmware_helpers.issuing import (
        issue_devices,
        load_issuing_ca,
        names_from_count,
        read_names_file,
        validate_inputs,
    )

    if args.count is not None:
        if not args.prefix:
            raise InvalidInputError("--count needs --prefix (devices are named PREFIX0001, ...)")
        names = names_from_count(args.prefix, args.count)
    elif args.prefix:
        raise InvalidInputError("--prefix is used only with --count")
    elif args.names_file is not None:
        names = read_names_file(args.names_file)
    else:
        names = list(args.device_name)
    validate_inputs(args.product_key, names)
    ca = load_issuing_ca(args.ca, args.ca_key)
    show = args.progress or sys.stderr.isatty()
    progress = ProgressLine(sys.stderr) if show else None
    try:
        report = issue_devices(
            ca,
            args.product_key,
            names,
            args.out,
            days=args.days,
            key_size=args.key_size,
            jobs=args.jobs,
            ledger_path=args.ledger,
            progress=progress,
        )
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every pair written so far is complete; run the same command again "
            "to resume",
            file=sys.stderr,
        )
        raise
    print(
        f"issued {len(report.issued)} device certificate(s) for {args.product_key} under CA SN "
        f"{report.ca_sn} in {report.seconds:.1f} s ({report.rate:.1f}/s, jobs={args.jobs or os.cpu_count()})"
    )
    if report.skipped:
        print(f"  {len(report.skipped)} already present (kept)")
    if report.removed:
        print(f"  {len(report.removed)} incomplete leftover file(s) of an interrupted run removed")
    print(f"  {len(report.devices)} device(s) in {report.out_dir}; SN ledger {report.ledger_path}")
    for path in report.csv_files:
        print(f"  association CSV: {path}")
    return 0


# --- certs export ------------------------------------------------------------------------------


def cmd_certs_export(args: argparse.Namespace) -> int:
    from firmware_helpers.export import export_credentials

    out = export_credentials(
        args.format,
        args.cert,
        args.key,
        args.out,
        server_ca_path=args.server_ca,
        force=args.force,
        align=args.align,
        prefix=args.symbol_prefix,
    )
    print(f"wrote {args.format} credentials to {out} (0600: it holds the private key)")
    return 0

"""``iotx509 provision``: its options and handlers (single board, batch, keys made on the board).

Split from :mod:`.cli` (which registers it beside ``device agent`` and ``sim board``) because
provisioning alone has four modes. Only the standard library and two dependency-free modules (the
defaults, the line's baud rate) are imported at the top; the handlers import the rest when they
run, so ``iotx509 --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from firmware_helpers.defaults import (
    ALLOWED_KEY_SIZES,
    DEFAULT_CERT_DAYS,
    DEFAULT_KEY_SIZE,
    check_days,
)
from firmware_helpers.serial.link import DEFAULT_BAUD

if TYPE_CHECKING:
    from pathlib import Path

    from firmware_helpers.serial.batch import Report
    from firmware_helpers.serial.host import Host
    from firmware_helpers.serial.link import SerialLink


def add_provision_parser(parser: argparse.ArgumentParser) -> None:
    """The options of ``iotx509 provision`` (single, batch, on-board key generation)."""
    parser.add_argument(
        "--port",
        required=True,
        action="append",
        help="serial port: /dev/ttyUSB0, a pty path, socket://host:port, loop://"
        " (repeat it with --batch --generate-on-board: one board per port, in "
        "parallel)",
    )
    parser.add_argument("--cert", help="device certificate (PEM or DER; stored as PEM)")
    parser.add_argument(
        "--key",
        help="device private key (PEM or DER, PKCS#1 or PKCS#8, "
        "encrypted or not; stored as unencrypted PKCS#1 PEM)",
    )
    parser.add_argument(
        "--key-password-file",
        metavar="FILE",
        help="file whose first line is the password of an encrypted key "
        "(default: the IOTX509_KEY_PASSWORD environment variable)",
    )
    parser.add_argument("--server-ca", help="CA certificate the device uses to check the server")
    parser.add_argument(
        "--baud",
        type=int,
        default=DEFAULT_BAUD,
        help="line speed; must be the board's own (the agent's --baud) (default: %(default)s)",
    )
    parser.add_argument(
        "--report",
        help="provisioning report CSV that records which board got "
        "which pair (default: provisioning-report.csv beside the pairs: the "
        "--cert file's directory, or the --batch DIR)",
    )
    parser.add_argument("--retries", type=int, default=6, help="retries per request")
    parser.add_argument(
        "--timeout",
        type=float,
        default=0.5,
        help="seconds to wait for an answer, on top of the line time",
    )
    onboard = parser.add_argument_group(
        "keys generated on the board (protocol version 2)",
        "The board generates its RSA key and returns a CSR; the host issues the certificate "
        "([PK]_[DN]_[CA_SN].cer in --out, SN in the ledger first, one association CSV row) and "
        "sends it with the server CA. No private key exists on the host or crosses the line.",
    )
    onboard.add_argument(
        "--generate-on-board",
        action="store_true",
        help="have the board generate its key (needs --ca, --ca-key, "
        "--product-key, --device-name, --out)",
    )
    onboard.add_argument("--ca", help="the issuing CA certificate")
    onboard.add_argument("--ca-key", help="the CA's private key")
    onboard.add_argument("--product-key", help="the device's ProductKey")
    onboard.add_argument("--device-name", help="the device's DeviceName")
    onboard.add_argument(
        "--out",
        metavar="DIR",
        help="directory of the issued certificates, "
        "association CSV, SN ledger and provisioning report",
    )
    onboard.add_argument("--ledger", help="SN ledger (default: DIR/sn-ledger.jsonl)")
    onboard.add_argument(
        "--days", type=int, default=DEFAULT_CERT_DAYS, help="validity (default %(default)s)"
    )
    onboard.add_argument(
        "--prefix",
        help="with --batch: devices are named PREFIX0001, ... (the next names nobody has had)",
    )
    onboard.add_argument(
        "--key-bits",
        type=int,
        default=DEFAULT_KEY_SIZE,
        choices=ALLOWED_KEY_SIZES,
        help="RSA key size the board generates (default %(default)s)",
    )
    batch = parser.add_argument_group("factory batch")
    batch.add_argument(
        "--batch",
        metavar="DIR",
        nargs="?",
        const="",
        help="provision boards one after another from the pairs in DIR; with "
        "--generate-on-board (no DIR): boards on every --port in parallel",
    )
    how = batch.add_mutually_exclusive_group()
    how.add_argument(
        "--wait",
        dest="mode",
        action="store_const",
        const="wait",
        help="wait for the next board to answer (default)",
    )
    how.add_argument(
        "--prompt",
        dest="mode",
        action="store_const",
        const="prompt",
        help="ask the operator to press Enter for each board",
    )
    batch.add_argument("--max-boards", type=int, help="stop after this many boards")
    batch.add_argument(
        "--board-timeout",
        type=float,
        help="with --wait: stop when no new board appears for this many seconds",
    )
    parser.set_defaults(handler=_provision, mode="wait")


class _ProgressPrinter:
    """``certificate 1111/3848 bytes (29%)`` on one line of stderr, rewritten in place."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, what: str, sent: int, total: int) -> None:
        pct = 100 * sent // max(total, 1)
        line = f"  {what}: {sent}/{total} bytes ({pct}%)"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(len(self.last)))
        elif what != self.last.split(":")[0].strip() or sent == total:
            sys.stderr.write(line + "\n")
        self.last = line
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and self.last:
            sys.stderr.write("\n")
        self.last = ""


def _key_password(args: argparse.Namespace) -> bytes | None:
    """--key-password-file, else the environment variable, else none."""
    import os

    from firmware_helpers.serial.host import KEY_PASSWORD_ENV, read_password_file

    if args.key_password_file:
        return read_password_file(args.key_password_file)
    value = os.environ.get(KEY_PASSWORD_ENV)
    return value.encode() if value else None


def _open_report(path: str | Path) -> Report:
    """The provisioning report, checked writable before any board is touched."""
    from firmware_helpers.serial.batch import Report, check_report_writable

    report = Report.open(path)
    check_report_writable(report)
    return report


def _host(link: SerialLink, args: argparse.Namespace, progress: _ProgressPrinter | None) -> Host:
    """A host on ``link`` with the line options (--baud, --retries, --timeout)."""
    from firmware_helpers.serial.host import Host

    return Host(
        link,
        baud=args.baud,
        max_retries=args.retries,
        base_timeout=args.timeout,
        progress=progress,
    )


@contextmanager
def _one_board(args: argparse.Namespace, *, progress: bool) -> Iterator[Host]:
    """The host of the board on --port; the line (and the progress line) closed however the
    flow ends."""
    from firmware_helpers.serial.link import SerialLink

    link = SerialLink.open(args.port, baud=args.baud)
    printer = _ProgressPrinter() if progress else None
    try:
        yield _host(link, args, printer)
    finally:
        if printer is not None:
            printer.done()
        link.close()


def _provision(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firmware_helpers.errors import ProvisioningInputError
    from firmware_helpers.serial.batch import REPORT_NAME, pair_of, provision_pair
    from firmware_helpers.serial.host import load_credentials

    ports = args.port
    if args.generate_on_board:
        if args.cert or args.key:
            raise ProvisioningInputError(
                "--generate-on-board makes the key on the board: give no --cert/--key"
            )
        if args.batch is not None or len(ports) > 1:
            return _generate_on_board_batch(args)
    if len(ports) > 1:
        raise ProvisioningInputError(
            "several --port are for --batch --generate-on-board only; give one --port"
        )
    args.port = ports[0]
    if args.batch == "" and not args.generate_on_board:
        raise ProvisioningInputError("--batch needs the DIR of the issued pairs")
    if args.generate_on_board:
        return _generate_on_board(args)
    if args.batch:
        if args.cert or args.key:
            raise ProvisioningInputError("give either --batch DIR or --cert and --key, not both")
        return _batch(args)
    if not args.cert or not args.key:
        raise ProvisioningInputError("--cert and --key are required (or --batch DIR)")
    objects = load_credentials(args.cert, args.key, args.server_ca, password=_key_password(args))
    pair = pair_of(args.cert, args.key)
    report = _open_report(args.report or Path(args.cert).parent / REPORT_NAME)
    with _one_board(args, progress=True) as host:
        result = provision_pair(host, report, pair, objects)
    print(
        f"provisioned board {result.board_id}: {result.payload_bytes} bytes in "
        f"{result.seconds:.2f} s ({result.retransmissions} retransmissions, "
        f"{result.restarts} restarts); recorded in {report.path}"
    )
    if host.fell_back_to is not None:
        print(
            f"note: the board speaks serial protocol version {host.fell_back_to} only; it was "
            f"provisioned with the version {host.fell_back_to} flow"
        )
    return 0


def _generate_on_board(args: argparse.Namespace) -> int:
    from pathlib import Path

    from device_sdk.errors import InvalidNameError
    from device_sdk.naming import validate_new_device_name
    from firmware_helpers.errors import ProvisioningInputError
    from firmware_helpers.ledger import DEFAULT_LEDGER_NAME
    from firmware_helpers.serial.batch import REPORT_NAME
    from firmware_helpers.serial.onboard import OnBoardIssuer, provision_generated

    ca, server_ca, out = _onboard_common(args, name_option="device_name")
    try:
        validate_new_device_name(args.device_name)
    except InvalidNameError as exc:
        raise ProvisioningInputError(str(exc)) from exc
    issuer = OnBoardIssuer(
        ca,
        args.product_key,
        args.device_name,
        out,
        Path(args.ledger) if args.ledger else out / DEFAULT_LEDGER_NAME,
        server_ca_pem=server_ca,
        days=args.days,
    )
    issuer.check_free()
    report = _open_report(args.report or out / REPORT_NAME)
    with _one_board(args, progress=True) as host:
        result = provision_generated(host, issuer, report, bits=args.key_bits)
    print(
        f"provisioned board {result.board_id} with a key it generated itself: "
        f"{issuer.cert_path.name} (SN {issuer.sn}) in {result.seconds:.2f} s; no private key "
        f"left the board; recorded in {report.path}"
    )
    return 0


def _onboard_common(args: argparse.Namespace, *, name_option: str) -> tuple[Any, Any, Any]:
    """CA, server CA PEM and output directory for --generate-on-board, checked up front."""
    from pathlib import Path

    from device_sdk.certs import load_certificates, to_pem
    from device_sdk.errors import CredentialError, InvalidNameError
    from device_sdk.naming import validate_product_key
    from firmware_helpers.errors import ProvisioningInputError
    from firmware_helpers.issuing import load_issuing_ca, prepare_output_dir

    needed = ("ca", "ca_key", "product_key", name_option, "out")
    missing = [f"--{n.replace('_', '-')}" for n in needed if not getattr(args, n)]
    if missing:
        raise ProvisioningInputError(f"--generate-on-board needs {', '.join(missing)}")
    try:
        validate_product_key(args.product_key)
    except InvalidNameError as exc:
        raise ProvisioningInputError(str(exc)) from exc
    check_days(args.days, ProvisioningInputError)
    ca = load_issuing_ca(args.ca, args.ca_key)
    server_ca = None
    if args.server_ca:
        try:
            server_ca = to_pem(
                load_certificates(Path(args.server_ca).read_bytes(), source=args.server_ca)
            )
        except OSError as exc:
            raise ProvisioningInputError(
                f"cannot read server CA file {args.server_ca}: {exc.strerror or exc}"
            ) from exc
        except CredentialError as exc:
            raise ProvisioningInputError(f"not provisioning: {exc}") from exc
    return ca, server_ca, prepare_output_dir(args.out)


def _generate_on_board_batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firmware_helpers.errors import ProvisioningInputError
    from firmware_helpers.ledger import DEFAULT_LEDGER_NAME
    from firmware_helpers.serial.batch import REPORT_NAME
    from firmware_helpers.serial.link import SerialLink
    from firmware_helpers.serial.parallel import ParallelBatch

    if args.batch:
        raise ProvisioningInputError(
            "--batch takes no DIR with --generate-on-board: there are no pairs; give --out DIR"
        )
    if args.device_name:
        raise ProvisioningInputError("--batch names the devices from --prefix; no --device-name")
    if len(set(args.port)) != len(args.port):
        raise ProvisioningInputError("a --port is given twice")
    ca, server_ca, out = _onboard_common(args, name_option="prefix")
    ledger = Path(args.ledger) if args.ledger else out / DEFAULT_LEDGER_NAME
    report = _open_report(args.report or out / REPORT_NAME)
    links = []
    try:
        for port in args.port:
            links.append((port, SerialLink.open(port, baud=args.baud)))
        hosts = [(port, _host(link, args, None)) for port, link in links]
        batch = ParallelBatch(
            hosts,
            ca,
            args.product_key,
            args.prefix,
            out,
            ledger,
            report,
            server_ca_pem=server_ca,
            days=args.days,
            bits=args.key_bits,
            max_boards=args.max_boards,
            board_timeout=args.board_timeout,
            say=lambda line: print(line, flush=True),
        )
        summary = batch.run()
    finally:
        for _port, link in links:
            link.close()
    for result in summary.ports:
        print(
            f"  {result.port}: {len(result.provisioned)} provisioned, {len(result.failed)} failed"
        )
    print(
        f"{summary.provisioned} board(s) provisioned with keys they generated, "
        f"{summary.failed} failed; report: {report.path}"
    )
    return 0 if not summary.failed else 1


def _batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firmware_helpers.serial.batch import REPORT_NAME, Batch

    report = _open_report(args.report or Path(args.batch) / REPORT_NAME)
    password = _key_password(args)
    with _one_board(args, progress=False) as host:
        batch = Batch(
            host,
            args.batch,
            report,
            server_ca=args.server_ca,
            password=password,
            mode=args.mode,
            max_boards=args.max_boards,
            board_timeout=args.board_timeout,
        )
        summary = batch.run()
    print(
        f"{len(summary.provisioned)} board(s) provisioned, {len(summary.failed)} failed, "
        f"{summary.remaining} unused pair(s) left; report: {report.path}"
    )
    return 0 if not summary.failed else 1

"""``iotx509 provision``, ``iotx509 device agent`` and ``iotx509 sim board``.

Only the standard library is imported here; the handlers import the rest when they run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from device_sdk.cli_support import CommandTree

DEFAULT_BAUD = 115200


def register(tree: CommandTree) -> None:
    """Add the serial provisioning commands."""
    _provision_parser(tree.command(
        "provision",
        help="write a device certificate, key and server CA to a board over a serial line",
    ))
    device = tree.group("device", help="commands that run on the device")
    agent = device.add_parser(
        "agent", help="answer the serial provisioning protocol and keep the credentials in DIR",
        description="Board side of serial provisioning: stores device.cer, device.key (0600) "
        "and server-ca.pem in DIR (0700), replacing the set atomically on COMMIT.",
    )
    agent.add_argument("--port", required=True, help="serial port path or pyserial URL")
    agent.add_argument("--store", required=True, help="credential store directory")
    agent.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                       help="line speed; the host's --baud must be the same "
                       "(default: %(default)s)")
    agent.add_argument("--board-id", help="id reported in HELLO (default: /etc/machine-id)")
    agent.add_argument("--max-chunk", type=int, default=4096, help="largest DATA chunk accepted")
    agent.set_defaults(handler=_agent)

    sim = tree.group("sim", help="simulated hardware for tests and benchmarks")
    board = sim.add_parser(
        "board", help="a simulated board on a pseudo-terminal, with fault injection",
        description="Opens a pseudo-terminal pair, prints the path to give to --port, and runs "
        "the board agent on the other side until interrupted.",
    )
    board.add_argument("--store", required=True, help="credential store directory")
    board.add_argument("--board-id", help="board id (default: SIM-<random>)")
    board.add_argument("--baud", type=int, help="pace the line at this many baud (8N1)")
    board.add_argument("--boards", type=int, default=1,
                       help="after each successful commit, the next of N boards is connected "
                       "(each with its own store under --store)")
    board.add_argument("--max-chunk", type=int, default=4096)
    faults = board.add_argument_group("fault injection")
    faults.add_argument("--flip-bits", type=float, default=0.0, metavar="P",
                        help="probability that a frame gets one bit flipped")
    faults.add_argument("--drop-bytes", type=float, default=0.0, metavar="P",
                        help="probability that a frame loses one byte")
    faults.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    faults.add_argument("--stall-after", type=int, metavar="N",
                        help="stall the line when frame N arrives")
    faults.add_argument("--stall-seconds", type=float, default=2.0)
    faults.add_argument("--reboot-after", type=int, metavar="N",
                        help="reboot when the Nth frame since boot arrives")
    faults.add_argument("--reboot-times", type=int, default=1)
    faults.add_argument("--unplug-after", type=int, metavar="N",
                        help="close the pty (USB unplugged) when frame N arrives")
    faults.add_argument("--protocol-version", type=int,
                        help="speak only this protocol version (1: an old board without key "
                        "generation; default: every version)")
    board.set_defaults(handler=_sim_board)


def _provision_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", required=True,
                        help="serial port: /dev/ttyUSB0, a pty path, socket://host:port, loop://")
    parser.add_argument("--cert", help="device certificate (PEM or DER; stored as PEM)")
    parser.add_argument("--key", help="device private key (PEM or DER, PKCS#1 or PKCS#8, "
                        "encrypted or not; stored as unencrypted PKCS#1 PEM)")
    parser.add_argument("--key-password-file", metavar="FILE",
                        help="file whose first line is the password of an encrypted key "
                        "(default: the IOTX509_KEY_PASSWORD environment variable)")
    parser.add_argument("--server-ca", help="CA certificate the device uses to check the server")
    parser.add_argument("--baud", type=int, default=DEFAULT_BAUD,
                        help="line speed; must be the board's own (the agent's --baud) "
                        "(default: %(default)s)")
    parser.add_argument("--report", help="provisioning report CSV that records which board got "
                        "which pair (default: provisioning-report.csv beside the pairs: the "
                        "--cert file's directory, or the --batch DIR)")
    parser.add_argument("--retries", type=int, default=6, help="retries per request")
    parser.add_argument("--timeout", type=float, default=0.5,
                        help="seconds to wait for an answer, on top of the line time")
    batch = parser.add_argument_group("factory batch")
    batch.add_argument("--batch", metavar="DIR",
                       help="provision boards one after another from the pairs in DIR")
    how = batch.add_mutually_exclusive_group()
    how.add_argument("--wait", dest="mode", action="store_const", const="wait",
                     help="wait for the next board to answer (default)")
    how.add_argument("--prompt", dest="mode", action="store_const", const="prompt",
                     help="ask the operator to press Enter for each board")
    batch.add_argument("--max-boards", type=int, help="stop after this many boards")
    batch.add_argument("--board-timeout", type=float,
                       help="with --wait: stop when no new board appears for this many seconds")
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


def _provision(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firmware_helpers.errors import ProvisioningInputError
    from firmware_helpers.serial.batch import (
        REPORT_NAME,
        Report,
        check_report_writable,
        pair_of,
        provision_pair,
    )
    from firmware_helpers.serial.host import Host, load_credentials
    from firmware_helpers.serial.link import SerialLink

    if args.batch:
        if args.cert or args.key:
            raise ProvisioningInputError("give either --batch DIR or --cert and --key, not both")
        return _batch(args)
    if not args.cert or not args.key:
        raise ProvisioningInputError("--cert and --key are required (or --batch DIR)")
    objects = load_credentials(args.cert, args.key, args.server_ca,
                               password=_key_password(args))
    pair = pair_of(args.cert, args.key)
    report = Report.open(args.report or Path(args.cert).parent / REPORT_NAME)
    check_report_writable(report)
    link = SerialLink.open(args.port, baud=args.baud)
    progress = _ProgressPrinter()
    try:
        host = Host(link, baud=args.baud, max_retries=args.retries, base_timeout=args.timeout,
                    progress=progress)
        result = provision_pair(host, report, pair, objects)
    finally:
        progress.done()
        link.close()
    print(
        f"provisioned board {result.board_id}: {result.payload_bytes} bytes in "
        f"{result.seconds:.2f} s ({result.retransmissions} retransmissions, "
        f"{result.restarts} restarts); recorded in {report.path}"
    )
    return 0


def _batch(args: argparse.Namespace) -> int:
    from pathlib import Path

    from firmware_helpers.serial.batch import REPORT_NAME, Batch, Report, check_report_writable
    from firmware_helpers.serial.host import Host
    from firmware_helpers.serial.link import SerialLink

    report = Report.open(args.report or Path(args.batch) / REPORT_NAME)
    check_report_writable(report)
    password = _key_password(args)
    link = SerialLink.open(args.port, baud=args.baud)
    try:
        host = Host(link, baud=args.baud, max_retries=args.retries, base_timeout=args.timeout)
        batch = Batch(host, args.batch, report, server_ca=args.server_ca, password=password,
                      mode=args.mode,
                      max_boards=args.max_boards, board_timeout=args.board_timeout)
        summary = batch.run()
    finally:
        link.close()
    print(f"{len(summary.provisioned)} board(s) provisioned, {len(summary.failed)} failed, "
          f"{summary.remaining} unused pair(s) left; report: {report.path}")
    return 0 if not summary.failed else 1


def _agent(args: argparse.Namespace) -> int:
    from firmware_helpers.serial.agent import BoardAgent, default_board_id
    from firmware_helpers.serial.board import CredentialStore
    from firmware_helpers.serial.link import SerialLink

    store = CredentialStore(args.store)
    agent = BoardAgent(store, args.board_id or default_board_id(), max_chunk=args.max_chunk)
    link = SerialLink.open(args.port, baud=args.baud)
    print(f"board {agent.board_id}: answering on {args.port}, store {store.root}",
          file=sys.stderr, flush=True)
    try:
        agent.serve(link)
    finally:
        link.close()
    return 0


def _sim_board(args: argparse.Namespace) -> int:
    import signal
    import threading

    from firmware_helpers.serial.simboard import FaultPlan, SimBoard

    try:
        plan = FaultPlan(
            flip_rate=args.flip_bits, drop_rate=args.drop_bytes, seed=args.seed,
            stall_after=args.stall_after, stall_seconds=args.stall_seconds,
            reboot_after=args.reboot_after, reboot_times=args.reboot_times,
            unplug_after=args.unplug_after, baud=args.baud,
            protocol_version=args.protocol_version,
        )
    except ValueError as exc:
        from firmware_helpers.errors import SerialProvisioningError

        raise SerialProvisioningError(f"bad fault options: {exc}") from exc
    done = threading.Event()

    def stop(*_: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    sim = SimBoard(args.store, board_id=args.board_id, faults=plan, boards=args.boards,
                   max_chunk=args.max_chunk)
    with sim:
        print(sim.port, flush=True)
        print(f"simulated board {sim.base_id} on {sim.port}; store {args.store}; Ctrl-C stops",
              file=sys.stderr, flush=True)
        try:
            while not done.is_set() and not sim.stats.unplugged:
                done.wait(0.2)
        except KeyboardInterrupt:
            pass
    if sim.stats.unplugged:
        print("simulated board unplugged", file=sys.stderr)
    return 0

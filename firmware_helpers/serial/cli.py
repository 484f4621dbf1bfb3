"""``iotx509 provision``, ``iotx509 device agent`` and ``iotx509 sim board``.

``provision``'s options and handlers live in :mod:`.provision_cli`. Only the standard library is
imported here; the handlers import the rest when they run.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from device_sdk.cli_support import CommandTree
from firmware_helpers.serial.link import DEFAULT_BAUD
from firmware_helpers.serial.provision_cli import add_provision_parser


def register(tree: CommandTree) -> None:
    """Add the serial provisioning commands."""
    add_provision_parser(
        tree.command(
            "provision",
            help="write a device certificate, key and server CA to a board over a serial line",
        )
    )
    device = tree.group("device", help="commands that run on the device")
    agent = device.add_parser(
        "agent",
        help="answer the serial provisioning protocol and keep the credentials in DIR",
        description="Board side of serial provisioning: stores device.cer, device.key (0600) "
        "and server-ca.pem in DIR (0700), replacing the set atomically on COMMIT.",
    )
    agent.add_argument("--port", required=True, help="serial port path or pyserial URL")
    agent.add_argument("--store", required=True, help="credential store directory")
    agent.add_argument(
        "--baud",
        type=int,
        default=DEFAULT_BAUD,
        help="line speed; the host's --baud must be the same (default: %(default)s)",
    )
    agent.add_argument("--board-id", help="id reported in HELLO (default: /etc/machine-id)")
    agent.add_argument("--max-chunk", type=int, default=4096, help="largest DATA chunk accepted")
    agent.set_defaults(handler=_agent)

    sim = tree.group("sim", help="simulated hardware for tests and benchmarks")
    board = sim.add_parser(
        "board",
        help="a simulated board on a pseudo-terminal, with fault injection",
        description="Opens a pseudo-terminal pair, prints the path to give to --port, and runs "
        "the board agent on the other side until interrupted.",
    )
    board.add_argument("--store", required=True, help="credential store directory")
    board.add_argument("--board-id", help="board id (default: SIM-<random>)")
    board.add_argument("--baud", type=int, help="pace the line at this many baud (8N1)")
    board.add_argument(
        "--boards",
        type=int,
        default=1,
        help="after each successful commit, the next of N boards is connected "
        "(each with its own store under --store)",
    )
    board.add_argument("--max-chunk", type=int, default=4096)
    board.add_argument(
        "--key-pool",
        metavar="FILE",
        help="benchmarks' board-CPU model: take each key from FILE (made before the timed run "
        "with firmware_helpers.serial.keygen.write_key_pool) and wait its measured generation "
        "time, without using the host's CPU (default: generate every key for real)",
    )
    faults = board.add_argument_group("fault injection")
    faults.add_argument(
        "--flip-bits",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a frame gets one bit flipped",
    )
    faults.add_argument(
        "--drop-bytes",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a frame loses one byte",
    )
    faults.add_argument("--seed", type=int, default=0, help="seed of the fault generator")
    faults.add_argument(
        "--stall-after", type=int, metavar="N", help="stall the line when frame N arrives"
    )
    faults.add_argument("--stall-seconds", type=float, default=2.0)
    faults.add_argument(
        "--reboot-after", type=int, metavar="N", help="reboot when the Nth frame since boot arrives"
    )
    faults.add_argument("--reboot-times", type=int, default=1)
    faults.add_argument(
        "--unplug-after",
        type=int,
        metavar="N",
        help="close the pty (USB unplugged) when frame N arrives",
    )
    faults.add_argument(
        "--protocol-version",
        type=int,
        help="speak only this protocol version (1: an old board without key "
        "generation; default: every version)",
    )
    board.set_defaults(handler=_sim_board)


def _agent(args: argparse.Namespace) -> int:
    from firmware_helpers.serial.agent import BoardAgent, default_board_id
    from firmware_helpers.serial.board import CredentialStore
    from firmware_helpers.serial.link import SerialLink

    store = CredentialStore(args.store)
    agent = BoardAgent(store, args.board_id or default_board_id(), max_chunk=args.max_chunk)
    link = SerialLink.open(args.port, baud=args.baud)
    print(
        f"board {agent.board_id}: answering on {args.port}, store {store.root}",
        file=sys.stderr,
        flush=True,
    )
    try:
        agent.serve(link)
    finally:
        link.close()
    return 0


def _sim_board(args: argparse.Namespace) -> int:
    import signal
    import threading

    from firmware_helpers.errors import SerialProvisioningError
    from firmware_helpers.serial.keygen import BoardCpuModel, generate_key_and_csr
    from firmware_helpers.serial.simboard import FaultPlan, SimBoard

    try:
        plan = FaultPlan(
            flip_rate=args.flip_bits,
            drop_rate=args.drop_bytes,
            seed=args.seed,
            stall_after=args.stall_after,
            stall_seconds=args.stall_seconds,
            reboot_after=args.reboot_after,
            reboot_times=args.reboot_times,
            unplug_after=args.unplug_after,
            baud=args.baud,
            protocol_version=args.protocol_version,
        )
    except ValueError as exc:
        raise SerialProvisioningError(f"bad fault options: {exc}") from exc
    done = threading.Event()

    def stop(*_: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    keygen = generate_key_and_csr
    if args.key_pool:
        try:
            keygen = BoardCpuModel(args.key_pool)
        except ValueError as exc:
            raise SerialProvisioningError(f"--key-pool: {exc}") from exc
    sim = SimBoard(
        args.store,
        board_id=args.board_id,
        faults=plan,
        boards=args.boards,
        max_chunk=args.max_chunk,
        keygen=keygen,
    )
    with sim:
        print(sim.port, flush=True)
        model = " (board-CPU model: pooled keys)" if args.key_pool else ""
        print(
            f"simulated board {sim.base_id} on {sim.port}; store {args.store}{model}; Ctrl-C stops",
            file=sys.stderr,
            flush=True,
        )
        try:
            while not done.is_set() and not sim.stats.unplugged:
                done.wait(0.2)
        except KeyboardInterrupt:
            pass
    if sim.stats.unplugged:
        print("simulated board unplugged", file=sys.stderr)
    return 0

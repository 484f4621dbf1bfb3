"""Fuzz targets: one function per parser, each ``(data: bytes) -> None``.

The invariant of every target: the input is accepted, or refused with the project's own error
type (the package's exception root); never another exception and never a hang (libFuzzer's
``-timeout`` catches those). Where a parser has a second way to reach the same answer (whole vs.
piecewise feeding, decode after encode), the target also checks that both agree. Anything else
is raised as :class:`InvariantBroken` (or the original exception escapes) and counts as a crash.

The functions are plain Python, so the Hypothesis tests in ``tests/hardening`` call them too.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from device_sdk.certs import load_certificates
from device_sdk.errors import DeviceSDKError
from firmware_helpers.errors import SerialProvisioningError
from firmware_helpers.serial import protocol
from firmware_helpers.serial.framing import CorruptFrame, Frame, FrameDecoder
from server_stub.errors import AssociationRejectedError, ServerStubError  # noqa: TID251
from server_stub.mqtt import codec  # noqa: TID251
from server_stub.mqtt.errors import MqttError  # noqa: TID251
from server_stub.registry.associations import (  # noqa: TID251
    parse_associations,
    read_associations,
)
from server_stub.registry.cas import check_ca_upload  # noqa: TID251

from . import seeds


class InvariantBroken(AssertionError):
    """A parser answered, but the answer breaks a rule (not an 'accepted or refused' outcome)."""


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def _mqtt_feed(pieces: list[bytes]) -> tuple[list[codec.Packet], str | None]:
    decoder = codec.Decoder(max_packet_size=4096)
    packets: list[codec.Packet] = []
    for piece in pieces:
        try:
            packets.extend(decoder.feed(piece))
        except MqttError as exc:
            return packets, type(exc).__name__
    return packets, None


def mqtt_codec(data: bytes) -> None:
    """First byte = piece size; the rest is a byte stream for the incremental decoder."""
    if not data:
        return
    size, stream = data[0] or 1, data[1:]
    whole, whole_error = _mqtt_feed([stream])
    pieces, pieces_error = _mqtt_feed(_chunks(stream, size))
    # a feed() that raises drops the packets of that same call (the connection closes anyway),
    # so after an error the whole feed's packets need only be a prefix of the pieces' packets
    agree = whole_error == pieces_error and (
        whole == pieces if whole_error is None else pieces[: len(whole)] == whole
    )
    if not agree:
        raise InvariantBroken(
            f"whole feed gave {whole!r}/{whole_error}, pieces of {size} gave {pieces!r}/{pieces_error}"
        )
    for packet in whole:
        try:
            wire = codec.encode(packet)
        except MqttError as exc:
            raise InvariantBroken(f"decoded {packet!r} cannot be encoded again: {exc}") from exc
        again, error = _mqtt_feed([wire])
        if again != [packet] or error:
            raise InvariantBroken(f"{packet!r} -> {wire!r} -> {again!r} ({error})")


def _comparable(items: list[Frame | CorruptFrame]) -> list[object]:
    """Exceptions compare by identity; compare corruption reports by type and message."""
    return [i if isinstance(i, Frame) else (type(i.error), str(i.error)) for i in items]


def serial_protocol(data: bytes) -> None:
    """First byte = piece size; the rest is what a serial line delivers to host and board."""
    if not data:
        return
    size, stream = data[0] or 1, data[1:]
    whole = FrameDecoder().feed(stream)  # never raises, by contract
    decoder = FrameDecoder()
    pieces: list[Frame | CorruptFrame] = []
    for piece in _chunks(stream, size):
        pieces.extend(decoder.feed(piece))
    if _comparable(whole) != _comparable(pieces):
        raise InvariantBroken(f"whole feed gave {whole!r}, pieces of {size} gave {pieces!r}")
    for item in whole:
        if isinstance(item, Frame):
            try:
                protocol.decode_message(item)
            except SerialProvisioningError:
                pass
    board = protocol.BoardMachine("fuzz-board")
    try:
        for piece in _chunks(stream, size):
            board.receive_data(piece)
    except SerialProvisioningError:
        pass
    host = protocol.HostMachine(max_retries=1_000_000)
    host.request(protocol.Hello(4096))
    try:
        for piece in _chunks(stream, size):
            host.receive_data(piece)
    except SerialProvisioningError:
        pass


def association_csv(data: bytes) -> None:
    """The whole uploaded file, as the registry parses it before touching the store."""
    try:
        parsed = read_associations(data)
    except ServerStubError:
        return
    if len(parsed.rows) + len(parsed.errors) != parsed.total:
        raise InvariantBroken(
            f"{parsed.total} rows but {len(parsed.rows)} good + {len(parsed.errors)} bad"
        )
    try:
        parse_associations(data)
    except AssociationRejectedError:
        if not parsed.errors:
            raise InvariantBroken("rejected a file without row errors") from None
    else:
        if parsed.errors:
            raise InvariantBroken("accepted a file with row errors")


def certificate_upload(data: bytes) -> None:
    """First byte picks the path: 0 device-side loader, 1 uploaded CA, 2 uploaded verification."""
    if not data:
        return
    mode, body = data[0] % 3, data[1:]
    if mode == 0:
        try:
            certs = load_certificates(body)
        except DeviceSDKError:
            return
        if not certs:
            raise InvariantBroken("load_certificates accepted the input but returned nothing")
        return
    ca_pem = seeds.test_ca().cert_pem()
    verification_pem = seeds.verification().cert_pem()
    try:
        check_ca_upload(
            name="fuzz_ca",
            ca_data=body if mode == 1 else ca_pem,
            verification_data=body if mode == 2 else verification_pem,
            registration_code=seeds.REGISTRATION_CODE,
            ca_filename="ca.pem",
            verification_filename="verification.crt",
        )
    except ServerStubError:
        return


TARGETS: dict[str, Callable[[bytes], None]] = {
    "mqtt_codec": mqtt_codec,
    "serial_protocol": serial_protocol,
    "association_csv": association_csv,
    "certificate_upload": certificate_upload,
}

SEEDS: dict[str, Callable[[], list[bytes]]] = {
    "mqtt_codec": seeds.mqtt_seeds,
    "serial_protocol": seeds.serial_seeds,
    "association_csv": seeds.csv_seeds,
    "certificate_upload": seeds.certificate_seeds,
}


def resolve(name: str) -> Callable[[bytes], None]:
    """A target by name, or any ``module:function`` taking bytes."""
    if ":" in name:
        module, _, function = name.partition(":")
        found: Callable[[bytes], None] = getattr(importlib.import_module(module), function)
        return found
    return TARGETS[name]


def seeds_for(name: str) -> list[bytes]:
    return SEEDS[name]() if name in SEEDS else [b"seed"]

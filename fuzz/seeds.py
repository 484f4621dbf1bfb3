"""Seed inputs for the fuzz targets: one or two valid examples each, made at run time.

A coverage-guided fuzzer gets past the first length check much faster when it starts from a
real packet, frame, CSV file or certificate; nothing here is committed to the repository.
"""

from __future__ import annotations

from functools import cache

from firmware_helpers import pki
from firmware_helpers.serial import protocol
from server_stub.mqtt import codec  # noqa: TID251 (the fuzz targets exercise the server's parsers)

REGISTRATION_CODE = "0123456789abcdef" * 4


@cache
def test_ca() -> pki.CertifiedKey:
    """One CA per process: RSA key generation is the slow part."""
    return pki.create_ca("Fuzz Seed CA")


@cache
def verification() -> pki.CertifiedKey:
    return pki.issue_verification_certificate(test_ca(), REGISTRATION_CODE)


def mqtt_seeds() -> list[bytes]:
    packets: list[codec.Packet] = [
        codec.Connect(
            client_id="dev|securemode=2,signmethod=hmacsha256|",
            keep_alive=300,
            username="dev1&a1B2c3D4e5F",
        ),
        codec.Publish(topic="/a1B2c3D4e5F/dev1/user/up", payload=b'{"t":1}', qos=1, packet_id=7),
        codec.Subscribe(packet_id=3, topics=(("/a1B2c3D4e5F/dev1/#", 1),)),
        codec.Unsubscribe(packet_id=4, topics=("/a1B2c3D4e5F/+/x",)),
        codec.Puback(9),
        codec.Pingreq(),
        codec.Disconnect(),
    ]
    stream = b"".join(codec.encode(p) for p in packets)
    return [b"\x07" + stream, b"\x01" + codec.encode(packets[0])]


def serial_seeds() -> list[bytes]:
    messages: list[protocol.Message] = [
        protocol.Hello(4096),
        protocol.HelloReply(4096, 65536, "board-1"),
        protocol.Begin(protocol.ObjectType(1), 10, b"\x11" * 32),
        protocol.Data(0, b"0123456789"),
        protocol.Commit(),
        protocol.Nak(protocol.ErrorCode(1), "busy"),
    ]
    stream = b"".join(protocol.encode_message(m, i) for i, m in enumerate(messages))
    return [b"\x05" + stream]


def csv_seeds() -> list[bytes]:
    rows = [f"a1B2c3D4e5F,device-{i},{i:x}" for i in range(1, 6)]
    body = "ProductKey,DeviceName,CertSN\r\n" + "\r\n".join(rows) + "\r\n"
    return [body.encode(), b"\xef\xbb\xbf" + body.replace("\r\n", "\n").encode()]


def certificate_seeds() -> list[bytes]:
    ca = test_ca()
    pem = ca.cert_pem()
    from cryptography.hazmat.primitives.serialization import Encoding

    der = ca.certificate.public_bytes(Encoding.DER)
    return [b"\x00" + pem, b"\x01" + der, b"\x02" + verification().cert_pem() + pem]

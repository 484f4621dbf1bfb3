"""The fuzz targets' invariants, driven by Hypothesis (fast) and by atheris (heavy, bounded).

Invariant of every target (fuzz/targets.py): accepted, or refused with the project's own error
type; never another exception, never a hang. The atheris run found three ways a certificate
upload escaped as a server error (lazy extension/name parsing, InvalidVersion); they are mapped
in device_sdk.certs.load_certificates and the examples below keep them fixed.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import runner, seeds, targets
from server_stub.mqtt import codec

from .reliability import record

FUZZ_SECONDS = 15


@settings(max_examples=300, deadline=None)
@given(
    st.integers(1, 64),
    st.lists(
        st.sampled_from(seeds.mqtt_seeds()[0][1:].split(b"\x00")) | st.binary(max_size=40),
        max_size=12,
    ),
)
def test_mqtt_stream_pieces(size: int, parts: list[bytes]) -> None:
    targets.mqtt_codec(bytes([size]) + b"".join(parts))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                codec.Pingreq(),
                codec.Disconnect(),
                codec.Puback(5),
                codec.Publish(topic="/pk/dn/user/x", payload=b"\x00\xff", qos=1, packet_id=2),
                codec.Connect(client_id="c", keep_alive=60),
            ]
        ),
        max_size=8,
    ),
    st.binary(max_size=16),
    st.integers(1, 9),
)
def test_mqtt_valid_packets_with_trailing_garbage(
    packets: list[codec.Packet], garbage: bytes, size: int
) -> None:
    targets.mqtt_codec(bytes([size]) + b"".join(codec.encode(p) for p in packets) + garbage)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 64), st.binary(max_size=600))
def test_serial_random_line_bytes(size: int, data: bytes) -> None:
    targets.serial_protocol(bytes([size]) + data)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 32), st.integers(0, 400), st.integers(0, 255))
def test_serial_corrupted_valid_stream(size: int, pos: int, byte: int) -> None:
    stream = bytearray(seeds.serial_seeds()[0][1:])
    stream[pos % len(stream)] = byte
    targets.serial_protocol(bytes([size]) + bytes(stream))


CSV_PIECES = st.sampled_from(
    [
        "ProductKey,DeviceName,CertSN",
        "a1B2c3D4e5F",
        "dev-1",
        "dev-2",
        "0A",
        "00a",
        "zz",
        '"',
        '""',
        ",",
        "\r\n",
        "\n",
        "\r",
        "\ufeff",
        " ",
        "\x00",
        "é",
        "a" * 40,
    ]
)


@settings(max_examples=400, deadline=None)
@given(st.lists(CSV_PIECES, max_size=40), st.booleans())
def test_csv_fragments_bom_and_line_ends(pieces: list[str], bom: bool) -> None:
    targets.association_csv(("\ufeff" if bom else "").encode() + "".join(pieces).encode())


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_csv_random_bytes(data: bytes) -> None:
    targets.association_csv(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2), st.integers(0, 3000), st.integers(0, 255), st.integers(0, 3000))
def test_certificate_upload_mutations(mode: int, pos: int, byte: int, cut: int) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    body = bytearray(
        seeds.test_ca().certificate.public_bytes(Encoding.DER)
        if mode == 1
        else seeds.verification().cert_pem()
    )
    body[pos % len(body)] = byte
    targets.certificate_upload(bytes([mode]) + bytes(body[: max(cut, 40)]))


@pytest.mark.parametrize(
    "name",
    [
        "mqtt_codec",
        "serial_protocol",
        "association_csv",
        "certificate_upload",
    ],
)
def test_seeds_are_accepted_paths(name: str) -> None:
    """The seeds themselves go through every target without breaking an invariant."""
    for seed in targets.SEEDS[name]():
        targets.TARGETS[name](seed)


@pytest.mark.heavy
@pytest.mark.timeout(FUZZ_SECONDS * 4 + 300)
def test_atheris_targets_run_clean(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each target under coverage-guided fuzzing for a bounded time: no crash, no hang."""
    results = [runner.run_target(name, FUZZ_SECONDS, tmp_path) for name in targets.TARGETS]
    for result in results:
        record(
            f"fuzz-{result.target}",
            threat=f"hostile bytes into {result.target.replace('_', ' ')} (atheris, coverage-guided)",
            tried=f"{result.seconds} s of libFuzzer mutations from valid seeds",
            count=result.executions,
            result=(
                f"no crash, no hang; coverage {result.coverage} edges"
                if not result.crashed
                else "CRASH"
            ),
        )
    crashed = [r for r in results if r.crashed]
    assert not crashed, "\n\n".join(
        f"{r.target}: input {r.crash_input_hex}\n{r.output_tail}" for r in crashed
    )
    assert all(r.executions > 100 for r in results), [(r.target, r.executions) for r in results]


@pytest.mark.timeout(120)
def test_runner_reports_a_crash_and_its_input(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The harness can fail: a planted bug is found, reported with its input and traceback."""
    result = runner.run_target("tests.hardening.crashy_target:target", 20, tmp_path)
    assert result.crashed
    assert result.crash_input_hex is not None and result.crash_input_hex.startswith("42")
    assert "planted bug" in result.output_tail


@pytest.mark.timeout(120)
def test_runner_reports_a_hang(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(runner, "PER_INPUT_TIMEOUT", 2)
    result = runner.run_target("tests.hardening.crashy_target:hang", 20, tmp_path)
    assert result.crashed
    assert result.crash_input_hex is not None and bytes.fromhex(result.crash_input_hex)[:1] == b"H"

"""The benchmarks' board-CPU model (``iotx509 sim board --key-pool``): pooled keys, board time
waited rather than computed, each key once, and clear errors for a bad or empty pool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from device_sdk.csr import check_csr
from firmware_helpers.serial.agent import BoardAgent
from firmware_helpers.serial.board import CredentialStore
from firmware_helpers.serial.framing import Frame, FrameDecoder
from firmware_helpers.serial.keygen import (
    BoardCpuModel,
    PooledKey,
    generate_key_pool,
    write_key_pool,
)
from firmware_helpers.serial.protocol import (
    FEATURE_KEYGEN,
    Csr,
    ErrorCode,
    GenKey,
    Hello,
    KeyType,
    Nak,
    decode_message,
    encode_message,
)


@pytest.fixture(scope="module")
def pool() -> list[PooledKey]:
    return generate_key_pool(2)


def test_a_pool_gives_each_key_once_and_waits_its_measured_time(
    pool: list[PooledKey], tmp_path: Path
) -> None:
    assert all(k.seconds > 0 and k.bits == 2048 for k in pool)
    for key in pool:  # what was generated is a usable key and CSR
        check_csr(key.csr_der)
    path = tmp_path / "pool.jsonl"
    write_key_pool(path, pool)
    assert os.stat(path).st_mode & 0o777 == 0o600  # private keys: the owner's only
    waited: list[float] = []
    model = BoardCpuModel(path, sleep=waited.append)
    assert model.remaining == 2
    given = [model(2048), model(2048)]
    assert given == [(k.key_pem, k.csr_der) for k in pool]
    assert waited == [k.seconds for k in pool]  # board time, charged by waiting
    with pytest.raises(ValueError, match="has no unused RSA-2048 key left"):
        model(2048)


def test_a_pool_without_the_asked_size_or_unreadable_is_refused(
    pool: list[PooledKey], tmp_path: Path
) -> None:
    path = tmp_path / "pool.jsonl"
    write_key_pool(path, pool[:1])
    with pytest.raises(ValueError, match="no unused RSA-4096 key left"):
        BoardCpuModel(path)(4096)
    with pytest.raises(ValueError, match="cannot read the key pool"):
        BoardCpuModel(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"bits": 2048}\n')
    with pytest.raises(ValueError, match="cannot read the key pool"):
        BoardCpuModel(tmp_path / "bad.jsonl")


def _ask_for_a_key(tmp_path: Path, pool_path: Path) -> tuple[BoardAgent, object]:
    """A board drawing its keys from the pool at ``pool_path``, booted, greeted and asked for an
    RSA-2048 key (no background generation): the board and its one answer frame."""
    agent = BoardAgent(
        CredentialStore(tmp_path / "store"),
        "B",
        keygen=BoardCpuModel(pool_path),
        background_keygen=False,
    )
    agent.boot()
    agent.handle(encode_message(Hello(), 1))
    (reply,) = agent.handle(encode_message(GenKey(KeyType.RSA, 2048), 2))
    (frame,) = FrameDecoder().feed(reply)
    return agent, frame


def test_a_board_whose_pool_is_empty_answers_genkey_with_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    write_key_pool(path, [])
    agent, frame = _ask_for_a_key(tmp_path, path)
    assert isinstance(frame, Frame)
    nak = decode_message(frame)
    assert isinstance(nak, Nak) and nak.code is ErrorCode.STORAGE_ERROR
    assert "no unused RSA-2048 key left" in nak.text
    assert agent.machine.features == FEATURE_KEYGEN  # no DEFER announced when asked not to


def test_the_pooled_key_is_what_the_board_answers_with(
    pool: list[PooledKey], tmp_path: Path
) -> None:
    path = tmp_path / "pool.jsonl"
    write_key_pool(path, [PooledKey(k.bits, k.key_pem, k.csr_der, 0.0) for k in pool[:1]])
    _agent, frame = _ask_for_a_key(tmp_path, path)
    assert isinstance(frame, Frame) and decode_message(frame) == Csr(pool[0].csr_der)


def test_sim_board_refuses_an_unreadable_pool(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "iotx509",
            "sim",
            "board",
            "--store",
            str(tmp_path / "store"),
            "--key-pool",
            str(tmp_path / "missing.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and not proc.stdout
    assert "--key-pool: cannot read the key pool" in proc.stderr

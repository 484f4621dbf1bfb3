"""The SN ledger and the association CSV splitter, with cheap pre-made data."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from firmware_helpers.association_csv import (
    Association,
    existing_association_files,
    part_names,
    read_associations,
    write_associations,
)
from firmware_helpers.errors import DuplicateSerialError, InvalidInputError, LedgerError
from firmware_helpers.ledger import SerialLedger

# --- ledger ------------------------------------------------------------------------------------


def test_ledger_refuses_a_duplicate_sn_for_the_same_ca(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with SerialLedger(path) as ledger:
        ledger.reserve("CA01", 0xABCDEF0123456789, "pk1", "dev-0001")
        with pytest.raises(DuplicateSerialError) as info:
            # the same SN written differently (case, leading zeros) is the same number
            ledger.reserve("ca01", "00ABCDEF0123456789", "pk1", "dev-0002")
        assert info.value.sn == "abcdef0123456789"
        assert info.value.ca_sn == "ca01"
        assert "dev-0001" in str(info.value) and "never issued twice" in str(info.value)
        # another CA may use the same SN
        ledger.reserve("ca02", 0xABCDEF0123456789, "pk1", "dev-0002")
    with SerialLedger(path) as reopened:
        assert len(reopened) == 2
        assert ("ca01", "abcdef0123456789") in reopened
        with pytest.raises(DuplicateSerialError):
            reopened.reserve("ca01", "abcdef0123456789", "pk1", "dev-0003")
    assert len(path.read_text().splitlines()) == 2


def test_reserve_many_is_all_or_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with SerialLedger(path) as ledger:
        ledger.reserve("ca", 1, "pk", "dev-0001")
        with pytest.raises(DuplicateSerialError):
            ledger.reserve_many([("ca", 2, "pk", "dev-0002"), ("ca", 1, "pk", "dev-0003")])
        with pytest.raises(DuplicateSerialError):
            ledger.reserve_many([("ca", 3, "pk", "dev-0002"), ("ca", 3, "pk", "dev-0003")])
        assert len(ledger) == 1
        assert len(ledger.reserve_many([("ca", 2, "pk", "a"), ("ca", 3, "pk", "b")])) == 2
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["sn"] for line in lines] == ["1", "2", "3"]


def test_ledger_is_locked_against_a_second_run(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with SerialLedger(path), pytest.raises(LedgerError, match="in use by another issuing run"):
        SerialLedger(path)
    SerialLedger(path).close()  # released


def test_unfinished_last_line_is_dropped_but_corruption_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with SerialLedger(path) as ledger:
        ledger.reserve("ca", 0x10, "pk", "dev-0001")
    with path.open("ab") as fh:
        fh.write(b'{"ca_sn":"ca","sn":"11","product_k')  # died mid-write
    with SerialLedger(path) as ledger:
        assert len(ledger) == 1
        ledger.reserve("ca", 0x11, "pk", "dev-0002")
    assert len(path.read_text().splitlines()) == 2
    assert all(json.loads(line) for line in path.read_text().splitlines())

    path.write_text(path.read_text().replace('"sn":"10"', '"sn":"zz"'))
    with pytest.raises(LedgerError, match="line 1"):
        SerialLedger(path)
    path.write_text("not json\n")
    with pytest.raises(LedgerError, match="corrupt"):
        SerialLedger(path)
    path.write_text('{"ca_sn":"1"}\n')
    with pytest.raises(LedgerError, match="lacks one of the fields"):
        SerialLedger(path)


def test_closed_ledger_refuses(tmp_path: Path) -> None:
    ledger = SerialLedger(tmp_path / "l.jsonl")
    ledger.close()
    with pytest.raises(LedgerError, match="closed"):
        ledger.reserve("ca", 1, "pk", "dev-0001")


# --- association CSVs --------------------------------------------------------------------------


def _rows(count: int, product_key: str = "a1B2c3D4e5F") -> list[Association]:
    return [
        Association(product_key, f"dev-{i:06d}", format(0x8000000000000000 + i, "x"))
        for i in range(count)
    ]


def _data_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        records = list(csv.reader(fh))
    assert records[0] == ["ProductKey", "DeviceName", "CertSN"]
    return records[1:]


def test_part_names() -> None:
    assert part_names(0) == ["associations.csv"]
    assert part_names(10_000) == ["associations.csv"]
    assert part_names(10_001) == ["associations-0001.csv", "associations-0002.csv"]
    assert part_names(20_000) == ["associations-0001.csv", "associations-0002.csv"]
    assert len(part_names(20_001)) == 3


def test_exactly_10000_rows_make_one_file(tmp_path: Path) -> None:
    rows = _rows(10_000)
    files = write_associations(tmp_path, rows)
    assert [f.name for f in files] == ["associations.csv"]
    assert len(_data_rows(files[0])) == 10_000
    assert read_associations(files[0]) == rows


def test_10001_rows_split_into_two_files_and_stale_files_go(tmp_path: Path) -> None:
    rows = _rows(10_001)
    (tmp_path / "associations.csv").write_text("stale\n")
    files = write_associations(tmp_path, rows)
    assert [f.name for f in files] == ["associations-0001.csv", "associations-0002.csv"]
    assert [len(_data_rows(f)) for f in files] == [10_000, 1]
    assert read_associations(files[0]) + read_associations(files[1]) == rows
    assert existing_association_files(tmp_path) == files
    # a later, smaller set replaces the split files with one file
    files = write_associations(tmp_path, rows[:5])
    assert existing_association_files(tmp_path) == files == [tmp_path / "associations.csv"]


def test_custom_row_limit(tmp_path: Path) -> None:
    files = write_associations(tmp_path, _rows(7), max_rows=3)
    assert [len(_data_rows(f)) for f in files] == [3, 3, 1]


def test_csv_rejects_mixed_products_duplicates_and_bad_sns(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="one product"):
        write_associations(tmp_path, _rows(2) + _rows(1, "OtherPK"))
    with pytest.raises(InvalidInputError, match="appears twice"):
        write_associations(tmp_path, _rows(2) + _rows(1))
    with pytest.raises(InvalidInputError, match="canonical"):
        write_associations(tmp_path, [Association("pk", "dev-0001", "00AB")])
    assert existing_association_files(tmp_path) == []


def test_read_associations_checks_the_header(tmp_path: Path) -> None:
    path = tmp_path / "associations.csv"
    path.write_text("Product,Device,SN\n")
    with pytest.raises(InvalidInputError, match="header"):
        read_associations(path)
    path.write_text("ProductKey,DeviceName,CertSN\npk,dev-0001\n")
    with pytest.raises(InvalidInputError, match="line 2"):
        read_associations(path)

"""Association CSV parsing: the file format rules, checked without a store."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server_stub.errors import AssociationRejectedError, CsvRejectedError
from server_stub.registry.associations import (
    MAX_ROWS,
    AssociationRow,
    parse_associations,
    template,
)
from tests.server.conftest import csv_bytes

PK = "a1B2c3D4e5F"


def _errors(data: bytes) -> dict[int, str]:
    with pytest.raises(AssociationRejectedError) as exc:
        parse_associations(data)
    return {e.row: e.message for e in exc.value.rows}


def test_template_is_the_header_row() -> None:
    assert template() == "ProductKey,DeviceName,CertSN\r\n"


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
@pytest.mark.parametrize("bom", [False, True])
def test_bom_and_line_ends_do_not_matter(newline: str, bom: bool) -> None:
    parsed = parse_associations(
        csv_bytes([(PK, "dev-0001", "0A1B"), (PK, "dev_0002", "ff")], newline=newline, bom=bom)
    )
    assert parsed.product_key == PK
    assert parsed.rows == [
        AssociationRow(1, "dev-0001", "a1b"),
        AssociationRow(2, "dev_0002", "ff"),
    ]


def test_cert_sn_is_normalised_as_a_number() -> None:
    parsed = parse_associations(csv_bytes([(PK, "dev1", "000ABCdef"), (PK, "dev2", "0x10")]))
    assert [r.cert_sn for r in parsed.rows] == ["abcdef", "10"]


def test_blank_lines_are_skipped_but_keep_their_row_number() -> None:
    data = f"ProductKey,DeviceName,CertSN\n{PK},dev1,1\n\n{PK},d,2\n".encode()
    assert _errors(data) == {
        3: "DeviceName 'd' must be 4-32 characters of letters, digits and -_@.:"
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "the file is empty; it needs the header ProductKey,DeviceName,CertSN"),
        (b"ProductKey,DeviceName\n", "the header must be exactly ProductKey,DeviceName,CertSN"),
        (b"productkey,devicename,certsn\nx,y,z\n", "the header must be exactly"),
        (b"DeviceName,ProductKey,CertSN\n", "the header must be exactly"),
        (b"ProductKey,DeviceName,CertSN\n", "the file has no data rows (1 to 10,000 are needed)"),
        (b"ProductKey,DeviceName,CertSN\n\n\n", "the file has no data rows"),
        (b"\xff\xfeP\x00K\x00", "the file is not UTF-8 text"),
        (b"ProductKey,DeviceName,CertSN\nA\x00,b,c\n", "NUL characters"),
        (b'ProductKey,DeviceName,CertSN\n"a"b,c,d\n', "not valid CSV"),
    ],
)
def test_file_level_errors(data: bytes, message: str) -> None:
    with pytest.raises(CsvRejectedError, match=re.escape(message)) as exc:
        parse_associations(data)
    assert not isinstance(exc.value, AssociationRejectedError)


def test_more_than_10000_rows_are_refused() -> None:
    rows = [(PK, f"dev{i:05d}", format(i + 1, "x")) for i in range(MAX_ROWS + 1)]
    with pytest.raises(CsvRejectedError, match="more than 10,000 data rows"):
        parse_associations(csv_bytes(rows))
    assert len(parse_associations(csv_bytes(rows[:MAX_ROWS])).rows) == MAX_ROWS


def test_every_bad_row_is_listed_with_its_number() -> None:
    data = csv_bytes(
        [
            (PK, "good-0001", "1"),
            ("OtherProd1", "good-0002", "2"),
            (PK, "bad name!", "3"),
            (PK, "good-0004", "xyz"),
            (PK, "good-0001", "5"),
            (PK, "good-0006", "01"),
            (PK, "good-0007", ""),
            (PK, "good-0008", "8,extra"),
            (PK, "ok", "9"),
            (PK, "x" * 33, "a" * 41),
        ]
    )
    errors = _errors(data)
    assert errors == {
        2: "ProductKey 'OtherProd1' differs from 'a1B2c3D4e5F' (row 1); all devices in one "
        "file must belong to one product",
        3: "DeviceName 'bad name!' must be 4-32 characters of letters, digits and -_@.:",
        4: "CertSN: SN 'xyz' is not a hexadecimal number",
        5: "DeviceName 'good-0001' already appears in row 1",
        6: "CertSN 1 already appears in row 1",
        7: "CertSN is empty",
        8: "expected 3 fields (ProductKey,DeviceName,CertSN), found 4",
        9: "DeviceName 'ok' must be 4-32 characters of letters, digits and -_@.:",
        10: f"DeviceName '{'x' * 33}' must be 4-32 characters of letters, digits and -_@.:; "
        f"CertSN: SN '{'a' * 41}' is longer than 20 bytes",
    }


def test_rejection_message_counts_rows() -> None:
    with pytest.raises(
        AssociationRejectedError, match=r"^2 of 3 rows are invalid; nothing was saved$"
    ):
        parse_associations(csv_bytes([(PK, "dev1", "1"), (PK, "d", "2"), (PK, "dev3", "zz")]))


def test_bad_product_key_in_the_first_row() -> None:
    errors = _errors(csv_bytes([("bad-pk", "dev1", "1"), (PK, "dev2", "2")]))
    assert errors[1] == "ProductKey 'bad-pk' must be letters and digits only"


@given(
    st.lists(
        st.tuples(
            # the kit's rule: the platform's alphabet, but no formula character (- @) first
            st.from_regex(r"[A-Za-z0-9_.:][A-Za-z0-9\-_@.:]{3,31}", fullmatch=True),
            st.integers(min_value=1, max_value=2**159),
        ),
        min_size=1,
        max_size=30,
        unique_by=(lambda t: t[0], lambda t: t[1]),
    ),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
    st.booleans(),
)
def test_any_valid_file_round_trips(
    rows: list[tuple[str, int]], newline: str, bom: bool, upper: bool
) -> None:
    def sn_text(n: int) -> str:
        text = "00" + format(n, "x")
        return text.upper() if upper else text

    data = csv_bytes([(PK, dn, sn_text(sn)) for dn, sn in rows], newline=newline, bom=bom)
    parsed = parse_associations(data)
    assert [(r.device_name, int(r.cert_sn, 16)) for r in parsed.rows] == rows

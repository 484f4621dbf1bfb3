"""Command lines for the ``iotx509`` CLI, as tests and benchmarks type them.

``certs issue`` always takes the CA certificate, its key, the product key and the output folder;
tests and the issuing benchmark each wrote those eight words out. They are written here once, so a
renamed option changes one place.
"""

from __future__ import annotations

from pathlib import Path


def certs_issue_args(
    ca_cert: Path, ca_key: Path, product_key: str, out: Path, *options: str
) -> list[str]:
    """``certs issue`` with the CA pair, product key and output folder, then ``options``
    (e.g. ``--device-name``, ``--count``/``--prefix``, ``--jobs``); without the program name."""
    return [
        "certs",
        "issue",
        "--ca",
        str(ca_cert),
        "--ca-key",
        str(ca_key),
        "--product-key",
        product_key,
        "--out",
        str(out),
        *options,
    ]

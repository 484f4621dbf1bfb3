"""The factory tools' default numbers, in one place: the key sizes the kit makes and the
validity it issues certificates with. Every command-line option, engine and board default reads
them from here.

No dependency, so the command-line parsers and the board's protocol machine read them without
loading ``cryptography``. The SDK's own defaults (reconnect, keep-alive, port) are in
:mod:`device_sdk.defaults`; a renewed certificate's validity is the signer's
(:data:`firmware_helpers.signer.DEFAULT_RENEWAL_DAYS`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

#: RSA key size made when none is asked for. The platform accepts RSA device certificates only,
#: and the kit refuses keys under 2048 bits (:data:`device_sdk.csr.MIN_RSA_BITS`).
DEFAULT_KEY_SIZE: Final = 2048
#: The sizes ``--key-size``, ``--key-bits`` and a board's GENKEY accept.
ALLOWED_KEY_SIZES: Final = (2048, 3072, 4096)
#: Validity in days of an issued device certificate or a created CA unless ``--days`` says
#: otherwise (ten years: the field's usual device lifetime).
DEFAULT_CERT_DAYS: Final = 3650


def check_days(days: int, error: Callable[[str], Exception]) -> None:
    """Refuse a validity (``--days``) under one day with ``error`` and the one message.

    The engines (``issue_devices``, the signer) and ``provision --generate-on-board`` each raise
    their own part's error, so the caller passes its class; the rule and its wording live here.
    """
    if days < 1:
        raise error(f"--days must be at least 1, got {days}")


__all__ = ["ALLOWED_KEY_SIZES", "DEFAULT_CERT_DAYS", "DEFAULT_KEY_SIZE", "check_days"]

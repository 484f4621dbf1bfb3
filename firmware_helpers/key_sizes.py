"""The RSA key sizes the kit makes (device keys, CAs, keys generated on a board): one home.

The platform accepts RSA device certificates only, and the kit refuses keys under 2048 bits
(:data:`device_sdk.csr.MIN_RSA_BITS`); these are the sizes its tools offer. No dependency, so
the command-line parsers and the board's protocol machine read them without loading
``cryptography``.
"""

from __future__ import annotations

from typing import Final

#: The size made when none is asked for.
DEFAULT_KEY_SIZE: Final = 2048
#: The sizes ``--key-size``, ``--key-bits`` and a board's GENKEY accept.
ALLOWED_KEY_SIZES: Final = (2048, 3072, 4096)

__all__ = ["ALLOWED_KEY_SIZES", "DEFAULT_KEY_SIZE"]

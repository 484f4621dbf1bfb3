"""Account secrets: API tokens (stored only as SHA-256) and registration codes."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

ACCOUNT_NAME_RE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
#: Tokens carry 256 bits of randomness; the prefix makes a leaked one easy to recognise.
TOKEN_PREFIX = "iotx_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored: a token is never kept, logged or returned after it is created."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_token(token), stored_hash)


def new_registration_code() -> str:
    """64 lowercase hex characters, the shape the platform shows in its console."""
    return secrets.token_hex(32)

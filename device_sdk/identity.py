"""The identity the platform gives a device: its ProductKey and DeviceName."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from device_sdk.errors import InvalidNameError
from device_sdk.naming import validate_device_name, validate_product_key


@dataclass(frozen=True, slots=True)
class Identity:
    """Who the platform says this device is. Frozen and self-validating."""

    product_key: str
    device_name: str

    def __post_init__(self) -> None:
        validate_product_key(self.product_key)
        validate_device_name(self.device_name)

    def to_json(self) -> dict[str, str]:
        return {"productKey": self.product_key, "deviceName": self.device_name}

    @classmethod
    def from_json(cls, data: Any) -> Identity:
        """From the platform's ``{"productKey": .., "deviceName": ..}`` (dict, str or bytes)."""
        if isinstance(data, bytes | str):
            try:
                data = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidNameError(f"identity is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidNameError("identity must be a JSON object")
        pk, dn = data.get("productKey"), data.get("deviceName")
        if not isinstance(pk, str) or not isinstance(dn, str):
            raise InvalidNameError("identity needs string fields productKey and deviceName")
        return cls(product_key=pk, device_name=dn)

    def topic(self, relative: str) -> str:
        """``user/update`` -> ``/{pk}/{dn}/user/update``; absolute topics are kept as given."""
        if relative.startswith("/"):
            return relative
        return f"/{self.product_key}/{self.device_name}/{relative}"

"""HTTP statuses belong to the API layer: the error classes carry none, the table maps them."""

from __future__ import annotations

import inspect
import json

import pytest

from server_stub import errors as server_errors
from server_stub.api.errors import HTTP_ERRORS, http_status, server_error_response
from server_stub.errors import (
    AssociationRejectedError,
    AuthenticationError,
    CaCertificateRejectedError,
    DataStoreError,
    DeviceOfflineError,
    InvalidFieldError,
    RowError,
    SchemaVersionError,
    ServerStubError,
)
from server_stub.mqtt import errors as mqtt_errors
from server_stub.mqtt.errors import MqttProtocolError


def _server_error_classes() -> list[type[ServerStubError]]:
    return [
        obj
        for module in (server_errors, mqtt_errors)
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, ServerStubError)
    ]


@pytest.mark.parametrize("cls", _server_error_classes(), ids=lambda c: c.__name__)
def test_error_classes_carry_no_http_notions(cls: type[ServerStubError]) -> None:
    assert not {"status", "code", "to_json"} & set(vars(cls)), cls


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InvalidFieldError("name: too short"), (400, "invalid_input")),
        (CaCertificateRejectedError("not a CA"), (400, "invalid_certificate")),
        (AuthenticationError("no token"), (401, "unauthorized")),
        (DeviceOfflineError("offline"), (409, "device_offline")),
        (DataStoreError("disk full"), (500, "store_error")),
        (SchemaVersionError("newer", found=9, supported=2), (500, "store_error")),
        (MqttProtocolError("bad packet"), (500, "internal_error")),
    ],
)
def test_a_class_takes_the_status_of_its_nearest_mapped_class(
    exc: ServerStubError, expected: tuple[int, str]
) -> None:
    assert http_status(exc) == expected


def test_the_table_maps_only_server_errors_and_the_root_is_in_it() -> None:
    assert ServerStubError in HTTP_ERRORS
    assert all(issubclass(cls, ServerStubError) for cls in HTTP_ERRORS)


def test_a_rejected_association_lists_its_rows_and_401_asks_for_a_bearer_token() -> None:
    rows = [RowError(1, "bad SN"), RowError(3, "duplicate DeviceName")]
    response = server_error_response(AssociationRejectedError("2 bad rows", rows))
    assert response.status_code == 422
    assert json.loads(bytes(response.body)) == {
        "error": {
            "code": "association_rejected",
            "message": "2 bad rows",
            "rows": [
                {"row": 1, "message": "bad SN"},
                {"row": 3, "message": "duplicate DeviceName"},
            ],
        }
    }
    unauthorized = server_error_response(AuthenticationError("no token"))
    assert unauthorized.status_code == 401
    assert unauthorized.headers["www-authenticate"] == "Bearer"

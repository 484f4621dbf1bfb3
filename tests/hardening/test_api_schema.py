"""The HTTP API tested from its own OpenAPI description (schemathesis) against the real server.

Every operation gets schema-conforming requests (positive) and schema-violating ones
(negative), with a valid token and with the token of an account that owns data. The rules: no
response is a 5xx, and every 4xx body is the documented ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from server_stub.launcher import RunningServer

from .conftest import make_tenant
from .reliability import record

EXAMPLES_PER_MODE = 40


def _check(response: Any, outcome: Counter[str]) -> None:
    status = response.status_code
    outcome[f"{status // 100}xx"] += 1
    assert status < 500, (
        f"{response.request.method} {response.request.url} -> {status}: {response.text[:500]}"
    )
    if status >= 400:
        body = response.json()
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error.get("code"), str) and error["code"], body
        assert isinstance(error.get("message"), str) and error["message"], body


@pytest.mark.timeout(240)
def test_openapi_operations_never_fail_with_5xx(server: RunningServer) -> None:
    tenant = make_tenant(server.http_url, server.token)
    schema = schemathesis.openapi.from_url(f"{server.http_url}/openapi.json")
    # the live message stream never ends by itself: its first event ("ready") is enough
    schema.config.max_stream_events = 1
    headers = {"Authorization": f"Bearer {server.token}"}
    # real identifiers mixed into generated path parameters, so some requests reach deep code
    known = {
        "productKey": tenant.product_key,
        "caSn": tenant.ca_sn,
        "deviceName": "dev-0001",
        "certSn": "1001",
    }
    outcome: Counter[str] = Counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # raises on an invalid schema
        operations += 1
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(
                max_examples=EXAMPLES_PER_MODE,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=strategy, use_known=st.booleans())
            def run(case: Any, use_known: bool) -> None:
                if use_known and case.path_parameters:
                    for name in case.path_parameters:
                        if name in known:
                            case.path_parameters[name] = known[name]
                response = case.call(headers=headers, timeout=30)
                _check(response, outcome)

            run()
    total = sum(outcome.values())
    record(
        "api-schemathesis",
        threat="malformed or unexpected HTTP API requests",
        tried=(
            f"schemathesis from /openapi.json: {operations} operations, positive and negative "
            f"data, up to {EXAMPLES_PER_MODE} examples per operation and mode"
        ),
        count=total,
        result=(
            f"no 5xx; {outcome['2xx']} 2xx, {outcome['4xx']} 4xx, every error in the "
            '{"error": {"code", "message"}} shape'
        ),
    )
    assert operations >= 10 and total > operations * 10

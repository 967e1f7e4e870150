"""`polyvox serve` fuzzed from its own OpenAPI schema (schemathesis): whatever a client sends, the
answer is never a 5xx. A real uvicorn on loopback over a tiny bundle."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from test_serve import _start
from voices import make_bundle


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzzed")
    make_bundle(root / "models" / "champion", seed=2, version="1")
    process, url = _start(root, "-S", "serve.max_text_chars=300")
    yield url
    process.terminate()
    process.wait(timeout=30)


def test_no_server_error_for_any_request(served):
    # schemathesis's own pytest plugin (``from_fixture``) does not run under pytest 9 yet, so each
    # operation's Hypothesis strategy is driven here directly.
    schema = schemathesis.openapi.from_url(f"{served}/openapi.json", wait_for_schema=30)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/synthesize", "/voices", "/healthz", "/reload"}
    for operation in operations:
        statuses: list[int] = []

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def no_5xx(case):
            response = case.call(base_url=served, timeout=120)
            statuses.append(response.status_code)
            assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])

        no_5xx()
        # the strategy really produced requests: many for /synthesize, one at least for a bare GET
        assert len(statuses) >= (20 if operation.path == "/synthesize" else 1), (operation.path, statuses)

"""`polyvox serve` fuzzed from its own OpenAPI schema (schemathesis): whatever a client sends, the
answer is never a 5xx. A real uvicorn on loopback over a tiny bundle."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

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


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(f"{served}/openapi.json", wait_for_schema=30)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_for_any_request(case, served):
    response = case.call(base_url=served, timeout=120)
    assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])

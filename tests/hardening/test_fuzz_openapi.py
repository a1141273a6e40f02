"""Fuzzing: schemathesis against the /openapi.json a real `gateway serve` serves, with valid tokens.

A CI-bounded run: a fixed number of examples per operation and generation mode (positive and
negative), a fixed seed printed at the start (HARDENING_FUZZ_SEED overrides it to replay or explore).
Every response must be free of 5xx and conform to the document: a documented status code, the
documented content type, a body matching the schema, the documented headers.
"""

from __future__ import annotations

import os
from typing import Any

import hypothesis
import pytest
import requests
import schemathesis
from conftest import ConfigFactory
from helpers_proc import Served, http_call, prepare, serving
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

SEED = int(os.environ.get("HARDENING_FUZZ_SEED", "20261129"))
MAX_EXAMPLES = int(os.environ.get("HARDENING_FUZZ_EXAMPLES", "25"))  # per operation and mode
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance]
# (method, path) not fuzzed, with the reason
SKIPPED: dict[tuple[str, str], str] = {}


def _fuzz_operation(s: Served, op: Any, mode: GenerationMode, http: requests.Session,
                    session: str) -> list[str]:
    """Run one operation in one mode; the failures found (schemathesis reports them grouped)."""
    fresh_session = (op.method.upper(), op.path) == ("DELETE", "/sessions")

    @hypothesis.seed(SEED)
    @hypothesis.settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=False,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
                         print_blob=False, report_multiple_bugs=False)
    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        token = s.login("alice") if fresh_session else session  # logging out must not end the others
        headers = s.headers(token)
        response = case.call(base_url=f"http://127.0.0.1:{s.http_port}", session=http, headers=headers, timeout=20)
        case.validate_response(response, checks=CHECKS, headers=headers)

    try:
        run()
    except hypothesis.errors.Unsatisfiable:
        assert mode is GenerationMode.NEGATIVE  # nothing to make invalid (no parameters, no body)
    except (Exception, FailureGroup) as e:  # schemathesis failures come as a (Base)ExceptionGroup
        return [f"{op.label} [{mode.value}]: {type(e).__name__}: {e}"]
    return []


@pytest.mark.slow
def test_schemathesis_finds_no_5xx_and_no_response_outside_the_document(
        config_factory: ConfigFactory, tmp_path_factory: pytest.TempPathFactory) -> None:
    setup = prepare(config_factory, tmp_path_factory)
    print(f"schemathesis {schemathesis.SCHEMATHESIS_VERSION}: seed {SEED} (HARDENING_FUZZ_SEED), "
          f"{MAX_EXAMPLES} examples per operation and mode (HARDENING_FUZZ_EXAMPLES)")
    with serving(setup, "fuzz") as s, requests.Session() as http:
        http.trust_env = False  # no proxy: the server is on 127.0.0.1
        session = s.login("alice")
        s.create_job(session)  # something to find (id 1)
        doc = http_call(s.http_port, "GET", "/openapi.json").json()
        schema = schemathesis.openapi.from_dict(doc)
        failures: list[str] = []
        fuzzed = []
        for result in schema.get_all_operations():
            op = result.ok()
            key = (op.method.upper(), op.path)
            if key in SKIPPED:
                print(f"skipped {op.label}: {SKIPPED[key]}")
                continue
            fuzzed.append(op.label)
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                failures += _fuzz_operation(s, op, mode, http, session)
        assert "Traceback" not in s.output, s.output[-3000:]
    print(f"fuzzed {len(fuzzed)} operations: {', '.join(fuzzed)}")
    expected = {"POST /sessions", "DELETE /sessions", "POST /jobs", "GET /jobs", "GET /jobs/{id}",
                "POST /jobs/{id}/submit", "POST /jobs/{id}/finish", "GET /jobs/{id}/files", "GET /deadlines",
                "GET /specifications", "GET /config/statuses", "GET /health"}
    assert expected <= set(fuzzed)
    assert not failures, f"seed {SEED}:\n\n" + "\n\n".join(failures)

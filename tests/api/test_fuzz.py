"""Schemathesis fuzzes every operation of the app's own OpenAPI schema in-process (ASGI): no answer may be a 500.

The service runs on the embedded default with an empty data folder, so a generated POST /query names keys that don't
exist (or fails validation) and is refused before any job starts; nothing is trained. Bounded to a few dozen
examples per operation, with Hypothesis' deadline off (the first request of a fresh app is slow on a busy machine).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, settings  # noqa: E402 (after the skip)
from schemathesis.checks import not_a_server_error  # noqa: E402

from service_settings import settings_for  # noqa: E402
from scarches_api.api import create_app  # noqa: E402

MAX_EXAMPLES = 30
BUDGET_S = 60.0
_started: list[float] = []
_statuses: dict[str, Counter] = {}  # per operation: the status codes its generated cases got


# Built at collection: schemathesis' lazy ``from_fixture`` doesn't work with pytest 9 (it reads Function._nodeid).
_TMP = Path(tempfile.mkdtemp(prefix="scarches-fuzz-"))
schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings_for(_TMP)))


@pytest.fixture(scope="module", autouse=True)
def _cleanup() -> Iterator[None]:
    yield
    shutil.rmtree(_TMP, ignore_errors=True)


@pytest.mark.fault("fuzzed requests (schemathesis) to every operation of the OpenAPI schema")
@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases every run: a CI failure reproduces locally
)
def test_no_operation_answers_500(case, record_property) -> None:
    operation = f"{case.method} {case.path}"
    seen = _statuses.setdefault(operation, Counter())
    if not _started:
        _started.append(time.monotonic())
    if time.monotonic() - _started[0] > BUDGET_S:
        spent = f"{operation}: {sum(seen.values())} cases run before the {BUDGET_S:.0f} s budget was spent"
        record_property("observed", spent)
        pytest.skip(f"fuzzing budget of {BUDGET_S:.0f} s spent")
    if case.method == "POST" and case.path == "/query" and isinstance(case.body, dict):
        case.body.pop("webhook", None)  # a generated webhook URL must not be called from a test
    try:
        response = case.call_and_validate(checks=[not_a_server_error])
    except Exception as exc:
        seen[f"check failed ({type(exc).__name__})"] += 1
        raise
    else:
        seen[response.status_code] += 1
    finally:
        worst = max((s for s in seen if isinstance(s, int)), default=None)
        counts = ", ".join(f"{s}×{n}" for s, n in sorted(seen.items(), key=lambda kv: str(kv[0])))
        record_property("observed", f"{operation}: {sum(seen.values())} cases; statuses {counts}; worst {worst}"[:190])

"""The table of faults tried by the suite (docs/faults.md), as pytest hooks that tests/conftest.py takes in.

A test marked @pytest.mark.fault("what was done") records what it saw with record_property("observed", "...");
with SCARCHES_FAULT_TABLE set (`make faults`), the run writes one row per such test: fault, outcome, result.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_FAULTS: list[dict[str, str]] = []
FAULT_TABLE_HEADER = "| Fault or bad input | What happened (observed in the run) | Result | Test |"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    marker = item.get_closest_marker("fault")
    if marker is None or not (report.when == "call" or report.outcome != "passed"):
        return
    observed = dict(report.user_properties).get("observed", "")
    result = report.outcome if report.when == "call" else f"{report.outcome} in {report.when}"
    _FAULTS.append({"fault": marker.args[0], "observed": str(observed), "result": result, "test": item.nodeid})


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _row(r: dict[str, str]) -> str:
    return f"| {_cell(r['fault'])} | {_cell(r['observed'])} | {r['result']} | `{r['test']}` |"


def _test_of(line: str) -> str:
    return line.rsplit("`", 2)[1]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the rows of this run's fault tests; rows of fault tests this run did not run are kept as they were
    (so running one file with SCARCHES_FAULT_TABLE set updates its rows only)."""
    target = os.environ.get("SCARCHES_FAULT_TABLE")
    if not target or not _FAULTS:
        return
    path = Path(target)
    text = path.read_text() if path.exists() else "# Faults and bad inputs tried\n\n"
    intro, _, table = text.partition(FAULT_TABLE_HEADER)
    rows: dict[str, list[str]] = {}  # by test id; a test may have several rows (schemathesis: one per operation)
    for line in table.splitlines():
        if line.startswith("| ") and "`" in line:
            rows.setdefault(_test_of(line), []).append(line)
    ran: dict[str, list[str]] = {}
    for r in _FAULTS:
        ran.setdefault(r["test"], []).append(_row(r))
    rows.update(ran)
    lines = [FAULT_TABLE_HEADER, "|---|---|---|---|", *(line for test in sorted(rows) for line in rows[test])]
    path.write_text(intro + "\n".join(lines) + "\n")

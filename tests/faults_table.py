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


def fault_table(rows: list[dict[str, str]]) -> str:
    def cell(text: str) -> str:
        return " ".join(text.split()).replace("|", "\\|")

    lines = [FAULT_TABLE_HEADER, "|---|---|---|---|"]
    lines += [f"| {cell(r['fault'])} | {cell(r['observed'])} | {r['result']} | `{r['test']}` |" for r in rows]
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    target = os.environ.get("SCARCHES_FAULT_TABLE")
    if not target or not _FAULTS:
        return
    path = Path(target)
    intro = path.read_text().split(FAULT_TABLE_HEADER)[0] if path.exists() else "# Faults and bad inputs tried\n\n"
    path.write_text(intro + fault_table(sorted(_FAULTS, key=lambda r: r["test"])))

"""docs/faults.md is the suite's table of faults: every test marked `fault` has its row (regenerate: make faults)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from faults_table import FAULT_TABLE_HEADER

ROOT = Path(__file__).resolve().parents[1]


def test_every_fault_test_has_its_row_in_docs_faults_md() -> None:
    collected = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "fault", "-p", "no:cacheprovider"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    marked = {line.strip() for line in collected.stdout.splitlines() if "::" in line}
    assert marked, collected.stdout[-2000:] + collected.stderr[-2000:]
    table = (ROOT / "docs" / "faults.md").read_text().split(FAULT_TABLE_HEADER)[1]
    rows = {line.rsplit("`", 2)[1] for line in table.splitlines() if line.startswith("| ") and "`" in line}
    assert not marked - rows, f"fault tests without a row in docs/faults.md (run `make faults`): {sorted(marked - rows)}"
    assert not rows - marked, f"rows of tests that no longer exist: {sorted(rows - marked)}"
    # (A fuzzing case may be skipped when its time budget is spent; none may have failed.)
    failed = [line for line in table.splitlines() if line.startswith("| ") and "| failed" in line]
    assert not failed, f"faults whose test failed when the table was made: {failed}"

"""Regenerate the README's config table from QueryConfig (tests/test_cli.py checks every key is documented)."""

import subprocess
import sys
from pathlib import Path

readme = Path(__file__).resolve().parents[1] / "README.md"
table = subprocess.run(
    [sys.executable, "-m", "scarches_api", "config", "--markdown"], check=True, capture_output=True, text=True
).stdout.strip()
text = readme.read_text()
start = text.index("| key | default | meaning |")
end = text.index("\n\n", start)
readme.write_text(text[:start] + table + text[end:])

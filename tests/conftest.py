import logging
import os

# Two cores: torch's default intra-op threads oversubscribe when numba/BLAS also spin up.
os.environ.setdefault("OMP_NUM_THREADS", "2")
logging.getLogger("scvi").setLevel(logging.WARNING)
logging.getLogger("lightning").setLevel(logging.WARNING)

# The table of faults (docs/faults.md): hooks in faults_table.py, here so pytest finds them.
from faults_table import pytest_runtest_makereport, pytest_sessionfinish  # noqa: E402, F401

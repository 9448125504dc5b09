import logging
import os
from collections.abc import Iterator

import pytest

from webhook_receiver import WebhookReceiver

# Two cores: torch's default intra-op threads oversubscribe when numba/BLAS also spin up.
os.environ.setdefault("OMP_NUM_THREADS", "2")
logging.getLogger("scvi").setLevel(logging.WARNING)
logging.getLogger("lightning").setLevel(logging.WARNING)

# The table of faults (docs/faults.md): hooks in faults_table.py, here so pytest finds them.
from faults_table import pytest_runtest_makereport, pytest_sessionfinish  # noqa: E402, F401


@pytest.fixture(scope="session")
def receiver() -> Iterator[WebhookReceiver]:
    """A real webhook receiver on loopback for the whole session (tests/test_webhooks*.py use a fresh one each)."""
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()

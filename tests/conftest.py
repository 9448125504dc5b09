import logging
import os

# Two cores: torch's default intra-op threads oversubscribe when numba/BLAS also spin up.
os.environ.setdefault("OMP_NUM_THREADS", "2")
logging.getLogger("scvi").setLevel(logging.WARNING)
logging.getLogger("lightning").setLevel(logging.WARNING)

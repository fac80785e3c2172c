import pytest

from ingest.config import PiiConfig
from ingest.scrub import ScrubPool


@pytest.fixture(scope="session")
def scrub_pool():
    """The real scrubber, in-process (workers=0), loaded once: spaCy + Presidio take a few seconds."""
    pool = ScrubPool(PiiConfig(workers=0))
    yield pool
    pool.close()

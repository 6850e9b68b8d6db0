"""Attacks against a real `kprobe serve` and a real sandboxed replay (issue: security).

Every test here runs the attack for real and asserts it is refused or contained; fixtures
shared with the integration tests (SeaweedFS, the compiled test programs) are re-exported.
"""

from pathlib import Path

import pytest

from tests.integration.conftest import programs, s3_server  # noqa: F401
from tests.security.api_server import RecordedLake, record_lake
from tests.support import require_root


@pytest.fixture(scope="session")
def api_lake(tmp_path_factory: pytest.TempPathFactory) -> RecordedLake:
    """The ledger workload recorded by the real agent and analysed, once per session, for
    the API attack tests (test_api_*.py); tests that break a lake work on a copy."""
    require_root()
    return record_lake(Path(tmp_path_factory.mktemp("api-lake")))

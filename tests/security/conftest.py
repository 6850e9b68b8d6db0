"""Attacks against a real `kprobe serve` and a real sandboxed replay (issue: security).

Every test here runs the attack for real and asserts it is refused or contained; fixtures
shared with the integration tests (SeaweedFS, the compiled test programs) are re-exported.
"""

from tests.integration.conftest import programs, s3_server  # noqa: F401

"""The matrix's one error: a step of the host's preparation that cannot go on (no QEMU, no
kernel package, a download that failed). Its text is the one-line reason printed."""


class VmtestError(Exception):
    """A one-line reason the matrix cannot run (not a kernel's test failure)."""


class NoQemuError(VmtestError):
    """QEMU (or what it needs to boot a guest) is missing or cannot run here."""

"""Errors of the capture_agent package.

    CaptureAgentError             base; carries a one-line human reason
    ├── OtlpError                 the OTLP receiver refused a request
    │   ├── OtlpDecodeError       malformed OTLP (bad protobuf/JSON, invalid ids) -> HTTP 400
    │   ├── OtlpBodyTooLarge      body (or its decompressed form) over the limit  -> HTTP 413
    │   ├── OtlpUnsupportedMedia  content type or encoding we do not speak       -> HTTP 415
    │   └── OtlpOverloaded        the span buffer is full; the sender retries    -> HTTP 503
    └── BpfError                  the kernel side of capture failed; carries errno
        ├── BpfObjectError        a compiled object is missing or unreadable (run `make bpf`)
        ├── BpfLoadError          libbpf/verifier refused the object; names the program
        ├── BpfAttachError        a program loaded but its attach point failed
        ├── BpfMapError           a map operation failed (targets, drops, resize)
        └── RingBufferError       a ring holds records the reader does not expect

Only the CLI ``main`` and the receiver's exception handlers turn these into exit codes and
HTTP statuses.
"""

from __future__ import annotations


class CaptureAgentError(Exception):
    """Base class: ``str(err)`` is a one-line reason fit for a user."""


class OtlpError(CaptureAgentError):
    """A request the OTLP receiver did not accept."""


class OtlpDecodeError(OtlpError):
    """The body is not a valid ExportTraceServiceRequest (protobuf or OTLP JSON)."""


class OtlpBodyTooLarge(OtlpError):
    """The body, or what it decompresses to, exceeds the configured limit."""


class OtlpUnsupportedMedia(OtlpError):
    """A Content-Type or Content-Encoding the receiver does not accept."""


class OtlpOverloaded(OtlpError):
    """The span buffer is full (the lake is slow or down): retry later."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class BpfError(CaptureAgentError):
    """A failure of the BPF side; ``errno`` is the libbpf/kernel errno (0 if none)."""

    def __init__(self, message: str, errno: int = 0, log: list[str] | None = None) -> None:
        super().__init__(message)
        self.errno = errno
        self.log = log or []  # libbpf's warnings (the verifier log), for --verbose output


class BpfObjectError(BpfError):
    """A compiled BPF object is missing or cannot be opened."""


class BpfLoadError(BpfError):
    """The object (one of its programs) did not load: verifier, BTF, or permission."""


class BpfAttachError(BpfError):
    """A loaded program could not be attached to its tracepoint."""


class VdsoPatchError(CaptureAgentError):
    """A target whose vDSO could not be rewritten (gone, traced by another, no vDSO)."""


class BpfMapError(BpfError):
    """A map could not be resized, shared, read or updated."""


class RingBufferError(BpfError):
    """A ring buffer holds records of another size/version than its reader expects."""

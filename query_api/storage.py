"""Plain files in the lake's storage (job state, new data files of the live stream).

``file://`` lakes use the local file system and write through a temporary file and an
atomic rename; ``s3://`` lakes use the lake's S3 file system (``lake.filesystem``: its
endpoint and credentials; an object PUT is atomic). Reads go through pyarrow's native file
systems, not deltalake's Python file system handler (reading through that handler and then
exiting has aborted the interpreter on this machine, ``terminate called without an active
exception``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from kprobe.lake import LakeLocation, LakeUnavailable, filesystem


class LakeFiles:
    """Files under the lake root, by path relative to it."""

    def __init__(self, location: LakeLocation) -> None:
        self.location = location
        self.fs: pafs.FileSystem
        self.fs, self.base = filesystem(location)

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def write_bytes(self, relative: str, data: bytes) -> None:
        target = self.path(relative)
        try:
            if self.location.scheme == "file":
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
                with open(tmp, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
            else:
                with self.fs.open_output_stream(target) as out:
                    out.write(data)
        except OSError as err:
            raise LakeUnavailable(f"lake unavailable (write {relative}): {err}") from err

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                data: bytes = stream.read()
                return data
        except FileNotFoundError:
            return None
        except OSError as err:
            if "not found" in str(err).lower() or "no such" in str(err).lower():
                return None
            raise LakeUnavailable(f"lake unavailable (read {relative}): {err}") from err

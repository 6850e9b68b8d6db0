"""Plain files in the lake's storage (job state, new data files of the live stream).

``file://`` lakes use the local file system and write through a temporary file and an
atomic rename; ``s3://`` lakes use pyarrow's S3 file system with the lake's endpoint and
credentials (an object PUT is atomic). Reads go through pyarrow's native file systems, not
deltalake's Python file system handler (reading through that handler and then exiting has
aborted the interpreter on this machine, ``terminate called without an active exception``).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from lake.errors import LakeUnavailable
from lake.storage import LakeLocation


class LakeFiles:
    """Files under the lake root, by path relative to it."""

    def __init__(self, location: LakeLocation) -> None:
        self.location = location
        if location.scheme == "file":
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.base = str(location.local_path)
        else:
            self.fs, self.base = _s3(location)

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


def _s3(location: LakeLocation) -> tuple[pafs.S3FileSystem, str]:
    opts = location.storage_options
    kwargs: dict[str, Any] = {"region": opts.get("AWS_REGION", "us-east-1")}
    if opts.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = opts["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = opts.get("AWS_SECRET_ACCESS_KEY", "")
    endpoint = opts.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs), location.root[len("s3://"):]

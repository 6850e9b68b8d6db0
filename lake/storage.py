"""Where the lake lives and how to reach it: ``file://`` paths and ``s3://`` buckets."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from kprobe.lake.errors import LakeError

DEFAULT_LAKE_URI = "file:///var/lib/kprobe/lake"


class LakeSettings(BaseSettings):
    """Lake location and S3 credentials, from ``KPROBE_*`` (or the usual ``AWS_*``) env."""

    # populate_by_name: LakeSettings(s3_endpoint=...) must work, not only the env aliases
    model_config = SettingsConfigDict(env_prefix="KPROBE_", extra="ignore",
                                      populate_by_name=True)

    lake: str = DEFAULT_LAKE_URI
    node: str = Field(default_factory=socket.gethostname)
    s3_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("KPROBE_S3_ENDPOINT", "AWS_ENDPOINT_URL")
    )
    s3_access_key: str | None = Field(
        default=None, validation_alias=AliasChoices("KPROBE_S3_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_key: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KPROBE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
    )
    s3_region: str = Field(
        default="us-east-1", validation_alias=AliasChoices("KPROBE_S3_REGION", "AWS_REGION")
    )
    # Plain HTTP to the endpoint: only for a local SeaweedFS/MinIO on loopback.
    s3_allow_http: bool = False
    # Payloads sealed at rest (lake/sealing.py): agents seal for the file's active public
    # key; readers holding its private keys open them. None: payloads stored in the clear.
    payload_key_file: str | None = None

    def s3_env(self) -> dict[str, str]:
        """The ``KPROBE_S3_*`` variables that give a child process these S3 settings (the
        lake itself is the child's ``--lake``); unset settings are left out."""
        pairs = {"KPROBE_S3_ENDPOINT": self.s3_endpoint,
                 "KPROBE_S3_ACCESS_KEY": self.s3_access_key,
                 "KPROBE_S3_SECRET_KEY": self.s3_secret_key, "KPROBE_S3_REGION": self.s3_region,
                 "KPROBE_S3_ALLOW_HTTP": "true" if self.s3_allow_http else None}
        return {k: v for k, v in pairs.items() if v}


@dataclass(frozen=True)
class LakeLocation:
    """A resolved lake root: the URI every table lives under and how to open it."""

    root: str  # no trailing slash: file:///abs/path or s3://bucket/prefix
    scheme: str  # "file" | "s3"
    storage_options: dict[str, str]
    payload_key_file: str | None = None  # see LakeSettings.payload_key_file

    def table_uri(self, table: str, version: int = 1) -> str:
        return f"{self.root}/v{version}/{table}"

    def path_uri(self, *parts: str) -> str:
        """A URI under the root (graph snapshots, spools, job state)."""
        return "/".join([self.root, *parts])

    @property
    def local_path(self) -> Path:
        if self.scheme != "file":
            raise LakeError(f"{self.root} is not a local lake")
        return Path(urlparse(self.root).path)

    def for_deltalake(self, table: str) -> str:
        """deltalake takes plain paths for local tables and URIs for object stores."""
        uri = self.table_uri(table)
        return uri[len("file://") :] if self.scheme == "file" else uri


def resolve(settings: LakeSettings) -> LakeLocation:
    """Turn settings into a location; a malformed URI is a one-line LakeError."""
    uri = settings.lake.strip()
    keys = (str(Path(settings.payload_key_file).expanduser().resolve())
            if settings.payload_key_file else None)
    if "://" not in uri:  # a bare path is a local lake
        uri = "file://" + str(Path(uri).expanduser().resolve())
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(parsed.path)
        if not path.is_absolute():
            raise LakeError(f"lake path must be absolute: {settings.lake}")
        return LakeLocation(f"file://{str(path).rstrip('/') or '/'}", "file", {}, keys)
    if parsed.scheme in ("s3", "s3a"):
        if not parsed.netloc:
            raise LakeError(f"lake URI has no bucket: {settings.lake}")
        prefix = parsed.path.strip("/")
        root = f"s3://{parsed.netloc}" + (f"/{prefix}" if prefix else "")
        options = {"AWS_REGION": settings.s3_region}
        if settings.s3_endpoint:
            options["AWS_ENDPOINT_URL"] = settings.s3_endpoint
        if settings.s3_access_key:
            options["AWS_ACCESS_KEY_ID"] = settings.s3_access_key
        if settings.s3_secret_key:
            options["AWS_SECRET_ACCESS_KEY"] = settings.s3_secret_key
        if settings.s3_allow_http or (settings.s3_endpoint or "").startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
        # Commits race on the same log entry name; conditional put makes the loser retry
        # instead of overwriting (several agents append to one table).
        options["conditional_put"] = "etag"
        return LakeLocation(root, "s3", options, keys)
    raise LakeError(f"unsupported lake URI scheme {parsed.scheme!r}: use file:// or s3://")


def filesystem(location: LakeLocation) -> tuple[pafs.FileSystem, str]:
    """A pyarrow file system for the lake's storage and the root's path in it (a local
    directory, or ``bucket/prefix``), for listing and reading plain files."""
    if location.scheme == "file":
        return pafs.LocalFileSystem(), str(location.local_path)
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

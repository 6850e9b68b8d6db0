"""Where the lake lives and how to reach it, in one place (lake/storage.py): the storage
factory every package uses, and the settings a child process is given."""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from kprobe.lake import LakeSettings, filesystem, resolve


def test_a_child_gets_the_same_s3_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "AWS_REGION", "KPROBE_S3_ENDPOINT", "KPROBE_S3_ACCESS_KEY",
                 "KPROBE_S3_SECRET_KEY", "KPROBE_S3_REGION", "KPROBE_S3_ALLOW_HTTP"):
        monkeypatch.delenv(name, raising=False)
    ours = LakeSettings(lake="s3://bucket/p", s3_endpoint="http://127.0.0.1:8333",
                        s3_access_key="ak", s3_secret_key="sk", s3_region="eu-west-3",
                        s3_allow_http=True)
    # nothing unset is passed on, and the lake itself is the child's --lake
    bare = LakeSettings(lake="s3://bucket/p").s3_env()
    assert "KPROBE_LAKE" not in bare and "KPROBE_S3_ACCESS_KEY" not in bare
    assert resolve(LakeSettings(lake="s3://bucket/p")) != resolve(ours)  # the control
    for name, value in ours.s3_env().items():
        monkeypatch.setenv(name, value)
    child = LakeSettings(lake="s3://bucket/p")
    assert resolve(child) == resolve(ours)


def test_one_factory_for_local_and_s3(tmp_path: Path) -> None:
    fs, base = filesystem(resolve(LakeSettings(lake=str(tmp_path))))
    assert isinstance(fs, pafs.LocalFileSystem) and base == str(tmp_path)
    location = resolve(LakeSettings(lake="s3://bucket/prefix", s3_endpoint="http://127.0.0.1:1",
                                    s3_access_key="ak", s3_secret_key="sk"))
    fs, base = filesystem(location)
    assert isinstance(fs, pafs.S3FileSystem) and base == "bucket/prefix"
    assert fs.region == "us-east-1"

"""The throw-away SeaweedFS S3 server of tests and benchmarks: ``kprobe.demo.seaweed``
(the demo starts one too, for ``kprobe demo --s3``).

    with S3Server.start(tmp_dir) as s3:
        writer = lake.LakeWriter.from_settings(s3.lake_settings("lake"))
"""

from __future__ import annotations

from kprobe.demo.host import free_ports as _free_ports
from kprobe.demo.seaweed import (
    REGION,
    START_TIMEOUT_S,
    S3Server,
    S3ServerError,
    find_weed,
    main,
)

__all__ = ["REGION", "START_TIMEOUT_S", "S3Server", "S3ServerError", "_free_ports",
           "find_weed", "main"]

if __name__ == "__main__":
    raise SystemExit(main())

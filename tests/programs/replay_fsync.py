"""Appends a ledger entry, fsyncs it, and says whether that took longer than 40 ms."""

import os
import time

started = time.monotonic()
fd = os.open("ledger.dat", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
os.write(fd, b"entry\n")
os.fsync(fd)
os.close(fd)
elapsed_ms = (time.monotonic() - started) * 1000
print("slow" if elapsed_ms > 40 else "fast")

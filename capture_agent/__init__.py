"""Node agent: BPF capture, ring-buffer drain, enrichment, OTLP receiver, the record loop."""

import os as _os

# Allocators of a long-running agent, chosen before pyarrow or deltalake allocate (both read
# these once, at their first allocation; an explicit setting in the environment wins):
# - Arrow's buffers from the system allocator. Peak RSS at 100k events/s in the benchmark,
#   20 s runs: system 281-289 MB (4 runs); jemalloc 275 and 329 MB (with decay 0), and
#   before the other savings jemalloc made the idle agent ~65 MB bigger. Same CPU (+-1 %).
# - delta-rs's bundled jemalloc (``_RJEM_`` prefix) with one arena instead of 4 per CPU: its
#   writer threads each kept their own dirty pages (~35 MB less at peak, same commit time).
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
_os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1")

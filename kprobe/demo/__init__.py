"""The ₹50,000 payment incident (``kprobe demo``): a small payment system, its fault, and
the orchestration that stages, records and explains it.

Services, each a real process (``python -m kprobe.demo.<name>``) exporting OTLP spans:
    gateway      POST /payments: risk check, then settlement within --settlement-timeout-ms
    risk         POST /score: a few ms of scoring
    settlement   POST /postings: builds the settlement batch in fresh memory, commits the
                 entries to SQLite with fsync; deployed in a memory cgroup with a limit
    batch_job    the nightly reconciliation: cycles more memory than the cgroup's limit
    load         the load driver: a steady stream of payments, steered on stdin

Orchestration and host resources:
    incident     stages the incident under the agent, then analyses and explains it
    host         memory and CPU cgroups (v1 and v2), zram swap; always undone
    seaweed      a local SeaweedFS S3 server (``kprobe demo --s3``, tests)
    service      what the services share (tracer, JSON over HTTP, clearing attributes)
"""

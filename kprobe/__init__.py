"""The ``kprobe`` command: one module per subcommand in ``kprobe.commands``."""

__version__ = "0.1.0"

"""`make vmtest`: the kernel matrix. Boots each supported kernel in a QEMU VM that sees this
machine's root file system read-only (under a writable overlay in guest memory), runs the
capture checks inside it as root, and runs the same checks natively on the host's kernel.

Run as ``python -m tests.vmtest`` (root). Not collected by pytest: no ``test_*`` modules.
The pure parts (package selection, the result protocol, the lines it prints) have unit
tests in ``tests/unit/test_vmtest.py``.
"""

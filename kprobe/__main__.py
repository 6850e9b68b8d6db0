import sys

from kprobe.cli import main

sys.exit(main())

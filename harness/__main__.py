"""``python -m harness``: the mixbench command line."""

import sys

from harness.cli import main

sys.exit(main())

"""``python -m fastckpt``: the ``fastckpt`` command."""

import sys

from fastckpt.cli import main

sys.exit(main())

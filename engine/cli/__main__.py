"""``python -m engine.cli``: the same as the ``minibroker`` command."""

import sys

from engine.cli import main

sys.exit(main())

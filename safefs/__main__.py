"""``python -m safefs``: the same as the ``safefs`` command."""

import sys

from safefs.cli import main

sys.exit(main())

"""``python -m hookprune``: the same as the ``hookprune`` command."""

import sys

from hookprune.cli import main

sys.exit(main())

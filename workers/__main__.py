"""``python -m workers`` is ``livestream-ingester``."""

import sys

from workers.cli import main

sys.exit(main())

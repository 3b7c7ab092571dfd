# intent_ref: platform.devhost
"""Entry point of `python -m devhost`."""

import sys

from devhost.cli import main

sys.exit(main())

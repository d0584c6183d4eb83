"""Entry point for ``python -m smoothviz``."""

import sys

from smoothviz.cli import main

sys.exit(main())

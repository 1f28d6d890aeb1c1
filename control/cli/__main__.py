"""`python -m xdpbr.control.cli`: the CLI, as the `xdpbr` entry point runs it."""

import sys

from .main import main

sys.exit(main())

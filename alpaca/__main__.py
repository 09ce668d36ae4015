"""`python -m alpaca` runs the command line."""

import sys

from alpaca.cli import main

sys.exit(main())

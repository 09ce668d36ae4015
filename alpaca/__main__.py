"""`python -m alpaca` runs the command line."""

import sys

from alpaca.entry import main

sys.exit(main())

"""python -m mgdist: the mgdist command line (mgdist.cli)."""
import sys

from mgdist.cli import main

sys.exit(main())

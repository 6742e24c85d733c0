"""`python -m xvol_lab`: the `lab.py` command line."""

import sys

from xvol_lab.cli import main

if __name__ == "__main__":
    sys.exit(main())

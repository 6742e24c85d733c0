#!/usr/bin/env python
"""xvol_lab command line: `python lab.py --help`."""

import sys

from xvol_lab.cli import main

if __name__ == "__main__":
    sys.exit(main())

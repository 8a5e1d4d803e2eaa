# SPDX-License-Identifier: MIT
"""``python -m torchfault``: the ``torchfault`` command."""

import sys

from torchfault.cli import main

if __name__ == "__main__":
    sys.exit(main())

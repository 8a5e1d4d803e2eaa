# SPDX-License-Identifier: MIT
"""``python -m torchfault.cli``."""

import sys

from torchfault.cli import main

sys.exit(main())

"""`python -m t2i ...`, as `t2i ...` (what torchrun launches)."""

import sys

from .cli import main

sys.exit(main())

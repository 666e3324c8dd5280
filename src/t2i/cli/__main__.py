"""`python -m t2i.cli ...`, as `t2i ...`."""

import sys

from . import main

sys.exit(main())

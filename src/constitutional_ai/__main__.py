"""``python -m constitutional_ai`` = ``cai`` (what ``accelerate launch -m`` and ``torchrun -m`` run)."""

import sys

from .cli import main

sys.exit(main())

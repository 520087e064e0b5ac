"""``python -m bpgpu``: the same as the ``bpgpu`` command."""

import sys

from .cli import main

sys.exit(main())

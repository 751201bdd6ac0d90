"""``python -m napari_nemesis.cli``: the same as the ``nemesis`` command (torchrun uses it)."""

import sys

from . import main

sys.exit(main())

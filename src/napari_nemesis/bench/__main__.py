"""``python -m napari_nemesis.bench``: see ``napari_nemesis.bench.command``."""

from .command import main

if __name__ == "__main__":
    raise SystemExit(main())

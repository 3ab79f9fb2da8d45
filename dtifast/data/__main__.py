"""``python -m dtifast.data {make,preview} ...`` (the same as ``dtifast data ...``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())

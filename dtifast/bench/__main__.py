"""``python -m dtifast.bench``: see :mod:`dtifast.bench`."""
import sys

from . import main

sys.exit(main())

"""``python -m bst_search.ensemble``: see :mod:`bst_search.ensemble.cli`."""

import sys

from bst_search.ensemble.cli import main

if __name__ == "__main__":
    sys.exit(main())

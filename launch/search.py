"""Entry point for `ray submit launch/cluster.yaml launch/search.py -- <bst-search search args>`.

It runs on the head node and takes exactly the arguments of `bst-search search`; pass
`--address auto` to join the running cluster instead of starting a local Ray.
"""

import sys

from bst_search.search import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

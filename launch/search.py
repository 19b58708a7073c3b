"""Entry point for `ray submit launch/cluster.yaml launch/search.py -- <bst-search search args>`.

It runs on the head node and takes exactly the arguments of `bst-search search`; pass
`--address auto` (or the head's address) to join the running cluster instead of starting a
private local Ray. `ray submit` copies this file to the head's home directory, so it first
changes to the repository the cluster files mount (``$BST_REPO``, else ``~/bst-search``):
relative paths (the default work dir ``bst-runs``, a space file of your own) mean the same
on the head as in the repository on your machine, with or without the docker image.
"""

import os
import sys
from pathlib import Path


def repository() -> Path | None:
    """Where the cluster files mount the repository on this node, if it is there."""
    repo = Path(os.environ.get("BST_REPO", "~/bst-search")).expanduser()
    return repo if (repo / "pyproject.toml").is_file() else None


if __name__ == "__main__":
    if repository() is not None:
        os.chdir(repository())
    from bst_search.search import main

    sys.exit(main(sys.argv[1:]))

"""Search spaces: YAML files that say what a sweep varies, turned into Optuna define-by-run.

* :mod:`~bst_search.search.space.model`: :class:`SearchSpace` and its parameters;
* :mod:`~bst_search.search.space.parse`: reading and checking a YAML file (:func:`load_space`);
* :mod:`~bst_search.search.space.rules`: the configuration rules every sample must satisfy, and
  what the data allow a sweep to search (:func:`data_available`).
"""

from bst_search.config import is_text_backbone
from bst_search.search.space.model import (
    MAX_SUBSET_CHOICES,
    SUBSET_SEP,
    InvalidSample,
    Param,
    SearchSpace,
    SpaceError,
)
from bst_search.search.space.parse import (
    SPACE_DIR,
    load_space,
    packaged_spaces,
    resolve_space,
    space_from_dict,
)
from bst_search.search.space.rules import data_available, unsatisfiable

__all__ = ["MAX_SUBSET_CHOICES", "SPACE_DIR", "SUBSET_SEP", "InvalidSample", "Param", "SearchSpace",
           "SpaceError", "data_available", "is_text_backbone", "load_space", "packaged_spaces",
           "resolve_space", "space_from_dict",
           "unsatisfiable"]

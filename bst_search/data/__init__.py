"""Dataset loading: official layout in, validated and consolidated :class:`Dataset` out.

See the "Data contract" section of the design. Everyone reads data through
:func:`load_dataset`; nothing else opens ``.npy`` files.
"""

from bst_search.data.cache import default_cache_dir
from bst_search.data.errors import DataError, DataWarning
from bst_search.data.features import discover_backbones, is_text_backbone
from bst_search.data.loading import MISSING_POLICIES, Dataset, fingerprint, load_dataset

__all__ = [
    "MISSING_POLICIES",
    "DataError",
    "DataWarning",
    "Dataset",
    "default_cache_dir",
    "discover_backbones",
    "fingerprint",
    "is_text_backbone",
    "load_dataset",
]

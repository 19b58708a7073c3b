"""Synthetic data in the official layout, so the whole loop runs with no real data.

* :mod:`~bst_search.synth.data`: embeddings and metadata of a development, crowd and
  evaluation set (``bst-search synth``, ``make demo``, the tests);
* :mod:`~bst_search.synth.texts`: titles, tags and descriptions drawn from a sound's class;
* :mod:`~bst_search.synth.audio`: a few seconds of generated audio per sound, for trying
  ``bst-search extract``.
"""

from bst_search.synth.audio import write_audio_demo
from bst_search.synth.data import BACKBONE_DIMS, PRIORS, make_synthetic

__all__ = ["BACKBONE_DIMS", "PRIORS", "make_synthetic", "write_audio_demo"]

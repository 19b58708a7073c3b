"""Extraction: audio files and metadata text -> ``features/<backbone>_embeddings/<id>.npy``.

Modules: ``audio`` (index, decode, resample, bad-audio classification), ``inputs`` (ids and
text from the metadata), ``backbones`` (the registry: clap_audio, clap_text, panns,
minilm_text), ``compat`` (offline imports of laion_clap and panns_inference), ``checkpoint``
(safe loading, sha256), ``records`` (decode + policy, embed), ``run`` (manifest, resume,
in-process loop), ``distributed`` (Ray Data), ``testing`` (random-weight test checkpoints),
``cli``. Generated clips to try it on come from :mod:`bst_search.synth.audio`.
"""

"""DeePEn token-level fusion of experts with different vocabularies (training-free, per token).

Modules, bottom-up: ``anchors`` (common tokens after surface normalisation, persisted),
``relative`` (relative representations on demand), ``aggregate`` (weights, weighted average),
``inverse`` (the search back to the main member's tokens), ``feeding`` (ids <-> text across
tokenizers), ``members`` (local or Ray members behind one call interface), ``decoder`` (the loop).
Nothing here imports Ray; importing this package imports nothing heavy (import the submodules).
"""

"""Peers measured in one run: Torch-Pruning next to tf_filterprune (``tools/peers.py``).

Modules:

- :mod:`peers.config`: settings, width -> ratio conversion, records and summaries
  (plain Python: imported by both sides and the tests).
- :mod:`peers.keras_side`: runs in ``.venv`` (TensorFlow): our widths, the CNN's layers
  and parameter counts, the recorded example order, the ResNet-50 ``prune_once`` timing.
- :mod:`peers.torch_side`: runs in ``.venv-peers`` (``tools/setup_peers.sh``): the
  PyTorch port of the CNN, Torch-Pruning's pruners, the ResNet-50 timing.
- :mod:`peers.run`: the orchestration of the two subprocesses, and the outputs.
"""

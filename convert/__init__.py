"""Conversion between jaxmim Flax NNX models and PyTorch checkpoints of the original code bases.

* :mod:`convert.official`: build a jaxmim model configured like an official constructor call,
  load an official ``state_dict`` into it (strictly) and export one in the official key order
  (``official.build`` / ``official.load_state_dict`` / ``official.state_dict``).
* :mod:`convert.torch_swin`: a pure-PyTorch twin of microsoft/SimMIM's Swin and SimMIM models
  with the official ``state_dict`` layout (used to test the converter without the original repo).

Importing :mod:`convert` imports neither submodule (``torch_swin`` needs PyTorch, ``official`` does
not); import the one you need, e.g. ``from convert import official``.
"""

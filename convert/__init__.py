"""Conversion between jaxmim Flax NNX models and PyTorch checkpoints of the original code bases.

* :mod:`convert.official`: the generic machinery. Build a jaxmim model configured like an
  official constructor call, load an official ``state_dict`` into it (strictly) and export one in
  the official key order (``official.build`` / ``official.load_state_dict`` /
  ``official.state_dict``), for any registered *source* (``official.list_sources()``).
* One module per model family, each holding a pure-PyTorch twin of the official model (official
  ``state_dict`` layout, used to test the converter without the original repository) and the key
  tables of its sources: :mod:`convert.swin` (microsoft/SimMIM), :mod:`convert.vit`
  (facebookresearch/mae), :mod:`convert.ummae`, :mod:`convert.greenmim`, :mod:`convert.hivit`,
  :mod:`convert.groupmixformer`. Family modules are found automatically (``pkgutil``) the
  first time a source is looked up, so a new family is one new file.
* Layouts of model libraries, one module per library: :mod:`convert.timm_layouts` (timm's Swin
  and ViT: ``timm_swin``, ``timm_vit``) and :mod:`convert.hf_layouts` (transformers' Swin, SimMIM,
  ViT and ViT-MAE classes: ``hf_*``).
* Command-line tools: ``python -m convert.export`` (jaxmim run -> ``.pth`` / ``.safetensors`` in
  an official, timm or Hugging Face layout), ``python -m convert.import`` (such a checkpoint ->
  jaxmim run) and ``python -m convert.extract_backbone``.

Importing :mod:`convert` imports no submodule (the family modules need PyTorch, ``official``
does not); import the one you need, e.g. ``from convert import official``.
"""

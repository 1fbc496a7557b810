"""Constants shared by the config schema, the model registry and the input pipeline.

A leaf module: it imports nothing from ``jaxmim``, so any module may take its values from here
without an import cycle.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""ImageNet per-channel RGB mean, in [0, 1] pixel units (timm ``timm/data/constants.py``
``IMAGENET_DEFAULT_MEAN``)."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""ImageNet per-channel RGB standard deviation, in [0, 1] pixel units (timm ``timm/data/constants.py``
``IMAGENET_DEFAULT_STD``)."""

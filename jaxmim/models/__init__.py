"""Backbones. Importing this package registers every model in the registry."""

from jaxmim.models import swin  # noqa: F401  (registers the Swin variants)
from jaxmim.models.swin import SwinTransformer, SwinTransformerForSimMIM  # noqa: F401

"""Reference models written in plain PyTorch, with a ``width`` (and ``depth``) argument."""

from .vgg import VGG11
from .vit import ViT

__all__ = ["VGG11", "ViT"]

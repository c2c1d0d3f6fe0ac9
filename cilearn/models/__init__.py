"""Backbones and the growing incremental classifier.

``build_model(name, in_channels, image_size, **options)`` returns an :class:`IncrementalNet` whose
head starts with zero classes; call ``add_classes(k)`` at the start of every task.
"""

from cilearn.models.net import IncrementalHead, IncrementalNet
from cilearn.models.registry import build_model, list_models

__all__ = ["IncrementalHead", "IncrementalNet", "build_model", "list_models"]

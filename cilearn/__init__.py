"""cilearn: class-incremental learning for image classification with one shared training loop."""

__version__ = "0.1.0"

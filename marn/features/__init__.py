"""Item features: VGG16 fc7 image vectors, title word ids and word vectors (stage `features`)."""

from marn.features.build import build_features

__all__ = ["build_features"]

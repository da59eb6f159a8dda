"""Item features: VGG16 fc7 image vectors, title word ids and word vectors (stage `features`).

`marn.features.text` (the title tokenizer) imports only the standard library, so this package's
`__init__` imports nothing heavy: `build_features` is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["build_features"]


def __getattr__(name: str) -> Any:
    if name == "build_features":
        from marn.features.build import build_features

        return build_features
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

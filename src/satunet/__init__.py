"""satunet: fast UNet-family semantic segmentation of satellite and aerial imagery."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_model", "list_models"]


def __getattr__(name: str):
    # Lazy, so `satunet --help` and `satunet.__version__` do not pay for importing torch.
    if name in ("create_model", "list_models"):
        from satunet import models

        return getattr(models, name)
    raise AttributeError(f"module 'satunet' has no attribute {name!r}")

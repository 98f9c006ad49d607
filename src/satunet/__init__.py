"""satunet: fast UNet-family semantic segmentation of satellite and aerial imagery."""

__version__ = "0.1.0"

from satunet.models import create_model, list_models  # noqa: E402

__all__ = ["__version__", "create_model", "list_models"]

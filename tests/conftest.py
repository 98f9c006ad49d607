"""Shared fixtures: offline by default, tiny generated data, and the real ../shared/data tiles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests must never reach for the network (smp's hub download retries for ~20 s offline).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_LOVEDA = REPO.parent / "shared" / "data" / "loveda"


@pytest.fixture(scope="session")
def shared_loveda() -> Path:
    """Root of the 20 real LoveDA Train/Rural pairs; skips where ../shared is absent."""
    if not (SHARED_LOVEDA / "Train" / "Rural" / "images_png").is_dir():
        pytest.skip(f"real LoveDA tiles not found at {SHARED_LOVEDA} (../shared is absent)")
    return SHARED_LOVEDA


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))

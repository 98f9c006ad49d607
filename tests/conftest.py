"""Shared fixtures: offline by default, tiny generated data, and the real ../shared/data tiles."""

from __future__ import annotations

import os
from collections.abc import Iterator
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


# Two tiny UNets every process (subprocess, torchrun) can build by name: FILE.toml:tiny / :small.
TINY_PRESETS = """
[presets.tiny]
levels = [[4, 1], [8, 1]]

[presets.small]
levels = [[8, 1], [16, 1]]
"""


@pytest.fixture(scope="session")
def presets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A presets file holding the tiny models (``f"{presets}:tiny"`` is a model name)."""
    path = tmp_path_factory.mktemp("presets") / "tiny.toml"
    path.write_text(TINY_PRESETS)
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny tensors on a shared machine: one thread is ~10-80x faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))

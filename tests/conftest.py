from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"shared data {p} is absent (CI has ../shared/data; a fresh checkout may not)")
    return p


@pytest.fixture(scope="session")
def photo() -> np.ndarray:
    """The built-in default photo (ships with matplotlib), as (h, w, 3) uint8."""
    from fastssl.image import load_image

    return load_image(None)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def ameyoko() -> np.ndarray:
    """The paper's default source photo from ../shared/data (skips when absent)."""
    from fastssl.image import load_image

    return load_image(shared_file("images/ameyoko.jpg"))


@pytest.fixture(scope="session")
def cifar_archive() -> Path:
    """The CIFAR-10 train split as a JPEG ImageFolder archive from ../shared/data (skips when absent)."""
    return shared_file("cifar10-train-jpg.tar.gz")

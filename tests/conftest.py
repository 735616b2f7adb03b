import http.server
import threading
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def shared_file(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"test data {p} is absent beside this checkout")
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


@pytest.fixture
def http_dir(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, base URL)."""
    served = tmp_path / "www"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(served), **k)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield served, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


class BareCtx:
    """The least a method's ``train_step`` needs from the trainer: no autocast, and a step that
    only back-propagates (tests that look at one step's inputs, not at training)."""

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()

    def step(self, loss, name):
        loss.backward()

    def check_stop(self):
        pass


@pytest.fixture
def bare_ctx():
    return BareCtx()

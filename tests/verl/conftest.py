import pytest


@pytest.fixture(scope="module")
def ray_local():
    """A local Ray for one test module of tests/verl (start-up ~10 s), 4 logical CPUs for 2 + 2 colocated workers.

    Module scope, shut down afterwards: other test modules call `ray.init` themselves, which
    fails while a Ray from an earlier module is still up.
    """
    ray = pytest.importorskip("ray", reason="needs ray (requirements-cpu.txt installs it)")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=True)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def ray_gpu(ray_local):
    """`ray_local` for a GPU pool: fails at once, rather than after the pool's 300 s wait for
    resources, when Ray lists no GPU although torch sees one."""
    resources = ray_local.cluster_resources()
    assert resources.get("GPU", 0) >= 1, f"Ray lists no GPU: {resources}"
    return ray_local

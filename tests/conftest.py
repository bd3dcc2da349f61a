import math

import pytest
import torch

# Before any test imports transformers or timm: they import torchvision, which needs a tolerant import here.
import _thirdparty  # noqa: F401

#: torch's (major, minor) release: some tests compare with behaviour torch only has from a given release.
TORCH_RELEASE = tuple(int(part) for part in torch.__version__.split(".")[:2])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that starts a Python process takes a second or more: it is also ``slow`` (out of the inner loop)."""
    for item in items:
        if item.get_closest_marker("subprocess") is not None:
            item.add_marker(pytest.mark.slow)


def torch_nn_init(name: str, tensor: torch.Tensor, generator: torch.Generator, **kwargs):
    """``torch.nn.init.<name>`` drawing from ``generator``: passed to it where it takes one (torch 2.2 and later);
    on an older torch, the global RNG holds the generator's state for the call (put back after it)."""
    import inspect

    fn = getattr(torch.nn.init, name)
    if "generator" in inspect.signature(fn).parameters:
        return fn(tensor, **kwargs, generator=generator)
    with torch.random.fork_rng(devices=[]):
        torch.set_rng_state(generator.get_state())
        out = fn(tensor, **kwargs)
        generator.set_state(torch.get_rng_state())
    return out


def new_thread_count() -> int:
    """torch's intra-op thread count in a thread started now (in OpenMP builds: the last count set anywhere)."""
    import threading

    out = []
    th = threading.Thread(target=lambda: out.append(torch.get_num_threads()))
    th.start()
    th.join()
    return out[0]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def ks_critical(n: int, alpha: float = 1e-6) -> float:
    """Kolmogorov-Smirnov critical value (asymptotic, one sample) at significance ``alpha``."""
    return math.sqrt(-math.log(alpha / 2) / (2 * n))


def std_tolerance(n: int, kurtosis: float = 3.0, sigmas: float = 6.0) -> float:
    """Relative tolerance of a sample std from n draws: sigmas * sqrt((kurtosis - 1) / (4 n))."""
    return sigmas * math.sqrt((kurtosis - 1) / (4 * n))


@pytest.fixture
def g():
    return gen(0)


@pytest.fixture(autouse=True)
def _initializer_registry_restored():
    """Initializer classes that a test defines (and registers) leave the registry with the test: a bare name that
    one test's class takes is not ambiguous in the next test."""
    from torchinit.schemes.initializers import Initializer

    saved = dict(Initializer._registry)
    yield
    Initializer._registry.clear()
    Initializer._registry.update(saved)

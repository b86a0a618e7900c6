import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """The evaluation tests take hundreds of tiny steps: a second intra-op thread only adds
    synchronisation on the shared CI cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

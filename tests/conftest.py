import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored after): tiny tensors are fastest on one thread, it is kindest
    to a shared machine, and worker processes compared bit for bit run the same kernels. Folders whose tests
    all want it request it from an autouse fixture in their conftest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

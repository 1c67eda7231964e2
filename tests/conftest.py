import pytest
import torch


@pytest.fixture
def one_thread():
    """One intra-op thread for the test (restored after): tiny tensors are fastest on one thread, it is kindest
    to a shared machine, and worker processes compared bit for bit run the same kernels. Every test of the
    folders in ONE_THREAD_FOLDERS gets it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# folders of tiny-model tests, all run on one thread (the train tests compare bits with worker processes)
ONE_THREAD_FOLDERS = {"demo", "models", "objectives", "tasks", "train"}


@pytest.fixture(autouse=True)
def _one_thread_by_folder(request):
    if request.path.parent.name in ONE_THREAD_FOLDERS:
        request.getfixturevalue("one_thread")

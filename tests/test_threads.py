"""threads.torch_single_thread: one torch thread inside, the caller's count restored after."""

import pytest
import torch

from promptmid_cli.threads import torch_single_thread


def test_torch_runs_on_one_thread_inside_and_the_count_is_restored_even_after_an_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch_single_thread():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError):
            with torch_single_thread():
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)

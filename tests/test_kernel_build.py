"""`t2i.kernels.build`: the split of a kernel's work over threads, in a forked child too."""

import os
import time

import pytest
import torch

from t2i.kernels.build import PARALLEL_MIN_VALUES, run_split


def test_work_is_split_over_threads_and_a_forked_child_gets_its_own_pool(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    parts = []
    run_split(lambda start, end: parts.append((start, end)), 10, PARALLEL_MIN_VALUES)
    assert sorted(parts) == [(0, 5), (5, 10)]  # the pool's thread took one half
    if not hasattr(os, "fork"):
        pytest.skip("no fork here")
    child = os.fork()
    if child == 0:  # the parent's pool thread is not in the child: a stale pool would wait for it forever
        try:
            run_split(lambda start, end: None, 10, PARALLEL_MIN_VALUES)
        finally:
            os._exit(0)
    deadline = time.time() + 30
    while time.time() < deadline:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(child, 9)
    os.waitpid(child, 0)
    pytest.fail("the forked child hung on its parent's thread pool")

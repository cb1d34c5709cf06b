"""A run leaves the process as it found it, and the one Lightning internal we read means what we assume.

Library code (callbacks, loaders, the datamodule) must not install warning
filters or change thread counts for the whole process: users embed these
classes in their own programs and notebooks.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from tests.conftest import NO_PICTURES, REPO, ram_temp_root, size_torch_threads
from tests.fault_helpers import BatchesTrainedRecorder, WarningFiltersRecorder
from tests.test_cli import tiny_args

CNN = REPO / "configs" / "cnn.yaml"
FILTERS = "tests.fault_helpers.WarningFiltersRecorder"
# 60 training images in batches of 16: 4 steps an epoch, the last one of 12 images.
SMALL = ["--data.batch_size", "16", "--trainer.limit_val_batches", 1]


def test_batches_trained_this_epoch_counts_each_finished_batch(tiny_data, run_cli):
    cli = run_cli("fit", *tiny_args(CNN, tiny_data), *SMALL, *NO_PICTURES, "--trainer.max_epochs", 2,
                  "--trainer.callbacks+=tests.fault_helpers.BatchesTrainedRecorder")
    (recorder,) = [c for c in cli.trainer.callbacks if isinstance(c, BatchesTrainedRecorder)]
    assert recorder.seen == [(epoch, i, i + 1) for epoch in (0, 1) for i in range(4)]


def test_a_crash_and_a_mid_epoch_resume_leave_warning_filters_and_threads_as_found(tiny_data, run_cli):
    filters, threads = list(warnings.filters), torch.get_num_threads()
    common = [*tiny_args(CNN, tiny_data), *SMALL, "--trainer.max_epochs", 2]
    with pytest.raises(RuntimeError, match="injected crash"):
        run_cli("fit", *common, "--trainer.callbacks+=tests.fault_helpers.CrashAtStep",
                "--trainer.callbacks.init_args.step", 6, "--trainer.callbacks.init_args.ctrl_c", "false")
    assert list(warnings.filters) == filters and torch.get_num_threads() == threads
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed = run_cli("fit", *common, "--ckpt_path", "last", "--trainer.callbacks+=" + FILTERS)
    assert resumed.trainer.global_step == 8
    # Compared inside the run: cli.main and catch_warnings both put the filters of their start back.
    (recorder,) = [c for c in resumed.trainer.callbacks if isinstance(c, WarningFiltersRecorder)]
    assert recorder.at_setup is not None and recorder.at_end == recorder.at_setup
    # Lightning knows the training loader resumes mid-epoch, so it has nothing to warn about.
    assert not [w for w in caught if "not resumable" in str(w.message)]
    assert torch.get_num_threads() == threads


def test_each_xdist_worker_sizes_its_own_threads_and_a_users_setting_is_kept():
    controller: dict[str, str] = {}
    size_torch_threads(controller, cpu_count=2)  # the controller, before it starts workers
    assert controller["OMP_NUM_THREADS"] == "2"
    workers = []
    for _ in range(2):  # each worker starts with a copy of the controller's environment
        worker = {**controller, "PYTEST_XDIST_WORKER_COUNT": "2"}
        size_torch_threads(worker, cpu_count=2)
        workers.append(int(worker["OMP_NUM_THREADS"]))
    assert workers == [1, 1]  # not 2 each: 4 OpenMP threads on 2 cores
    user = {"OMP_NUM_THREADS": "2", "PYTEST_XDIST_WORKER_COUNT": "2"}
    size_torch_threads(user, cpu_count=2)
    assert user["OMP_NUM_THREADS"] == "2"
    one_worker = {**controller, "PYTEST_XDIST_WORKER_COUNT": "1"}
    size_torch_threads(one_worker, cpu_count=8)
    assert one_worker["OMP_NUM_THREADS"] == "2"  # at most 2


def test_the_temporary_folders_go_to_ram_only_where_there_is_room(tmp_path):
    assert ram_temp_root(tmp_path, room=1) == tmp_path
    assert ram_temp_root(tmp_path, room=1 << 60) is None  # more than any disk or RAM holds
    assert ram_temp_root(tmp_path / "missing", room=1) is None
    root = os.environ.get("PYTEST_DEBUG_TEMPROOT")
    if root:  # chosen by conftest, or by the user: pytest made this test's folder there
        assert tmp_path.resolve().is_relative_to(Path(root).resolve())

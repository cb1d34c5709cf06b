"""Several machines by Trainer flags, and preemption under SLURM, with real processes on loopback (gloo, CPU).

- Two "nodes" (two processes, each in its own folder with its own copy of the
  data, as two machines would be) train to the same bits as one node with two
  processes, by Lightning's own environment variables and by torchrun, and only
  global rank 0 writes logs, checkpoints and pictures. One node's val/acc,
  confusion matrix and per-class accuracy are those of one process
  validating the same (oddly sized) split: the ranks' counts are summed.
- Under SLURM, SIGUSR1 makes Lightning save ``hpc_ckpt_<n>.ckpt`` in
  ``default_root_dir`` and requeue the job (``scontrol`` here is a stub that
  records its call and, like SLURM, then sends the job SIGTERM). The CLI turns
  that SIGTERM into last.ckpt and exit 143. The requeued job, the same command
  with the same SLURM_JOB_ID, resumes from the hpc checkpoint bit-exactly, and
  with ``--ckpt_path last`` from last.ckpt to the same bits.

Every process runs with OMP_NUM_THREADS=1: the same threads per process in
both layouts is what makes their floating-point sums, hence the bits, agree.
docs/cluster.md shows the batch script and the torchrun line these tests run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.cluster_helpers import clean_env, free_port
from tests.conftest import NO_PICTURES, REPO
from tests.test_cli import SHORT_FAITHFULNESS, tiny_args

# One xdist worker takes the whole module (`--dist loadgroup` in pyproject.toml): its module-scoped fit is
# then trained once per test run, not once on each worker.
pytestmark = pytest.mark.xdist_group("test_cluster")

CNN = REPO / "configs" / "cnn.yaml"
# 72 tiny images, 13 validated (an odd count: 2 ranks get shards of 7 and 6, and a padded shard would count
# one image twice); batches of 16 over 2 ranks: 2 steps an epoch, 2 epochs.
TRAIN = ["--data.batch_size", "16", "--data.val_size", "13", "--trainer.deterministic", "true",
         "--trainer.max_epochs", "2"]
DDP = ["--trainer.strategy", "ddp", "--trainer.accelerator", "cpu"]
TIMEOUT = 300


def _command(data: Path, *extra: str) -> list[str]:
    # The faithfulness scores at the fit's end on global rank 0, shortened (Grad-CAM and the baselines, 2 curve
    # steps): the rank checks need the callback, not its full work, which the other ranks wait out at the end.
    return [str(REPO / "cli.py"), "fit", *map(str, [*tiny_args(CNN, data), *TRAIN, *DDP, *SHORT_FAITHFULNESS, *extra])]


def _env(**extra) -> dict[str, str]:
    return clean_env(PYTHONPATH=str(REPO), **extra)


def _machine(root: Path, name: str, tiny_data: Path) -> tuple[Path, Path]:
    """A folder for one machine with its own copy of the data."""
    folder = root / name
    shutil.copytree(tiny_data, folder / "data", ignore=shutil.ignore_patterns(".cache"))
    return folder, folder / "data"


def _wait_all(processes: list[subprocess.Popen]) -> list[tuple[int, str]]:
    """Wait for every process; kill the rest if one hangs, so a broken rendezvous fails instead of blocking CI."""
    results = []
    try:
        for process in processes:
            _, stderr = process.communicate(timeout=TIMEOUT)
            results.append((process.returncode, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for code, stderr in results:
        assert code == 0, stderr[-3000:]
    return results


def _run_dir(machine: Path) -> Path:
    (run,) = (machine / "lightning_logs" / "cnn").iterdir()
    return run


def _last_weights(machine: Path) -> dict[str, torch.Tensor]:
    return torch.load(_run_dir(machine) / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _assert_same_bits(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert torch.equal(value, expected[key]), key


def _assert_only_rank_zero_wrote(rank_zero: Path, others: list[Path]) -> None:
    """One run folder (version_0) with one event file and two checkpoints; the others' folders hold only data."""
    run = _run_dir(rank_zero)
    assert run.name == "version_0"
    (events,) = run.glob("events.out.tfevents.*")
    assert sorted(p.name for p in (run / "checkpoints").iterdir())[-1] == "last.ckpt"
    assert len(list((run / "checkpoints").iterdir())) == 2  # best-*.ckpt and last.ckpt
    assert (run / "run.json").is_file() and (run / "config.yaml").is_file()
    accumulator = EventAccumulator(str(events), size_guidance={"images": 0})
    accumulator.Reload()
    assert any(tag.startswith("gradcam/") for tag in accumulator.Tags()["images"])  # the pictures are drawn
    for other in others:  # the other machine's folder holds its data and nothing else
        assert sorted(p.name for p in other.iterdir()) == ["data"], sorted(other.rglob("*"))


@pytest.fixture(scope="module")
def one_node(tiny_data, tmp_path_factory) -> Path:
    """One machine, two processes: Lightning launches the second itself.

    Each rank also saves its validation confusion matrix to the machine's folder (it changes no bits).
    """
    machine, data = _machine(tmp_path_factory.mktemp("one_node"), "node", tiny_data)
    saver = "--trainer.callbacks+=tests.fault_helpers.ConfusionMatrixSaver"
    process = subprocess.Popen([sys.executable, *_command(data, "--trainer.devices", 2, saver)], cwd=machine,
                               env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_all([process])
    return machine


def test_one_node_synchronises_val_acc_and_the_confusion_matrix_over_its_ranks(one_node, run_cli):
    events = EventAccumulator(str(_run_dir(one_node)))
    events.Reload()
    # One process validating the same 13 images from the last checkpoint counts what the DDP run logged.
    single = run_cli("validate", *tiny_args(CNN, one_node / "data"), *TRAIN, *NO_PICTURES,
                     "--ckpt_path", _run_dir(one_node) / "checkpoints" / "last.ckpt")
    assert float(single.trainer.callback_metrics["val/acc"]) == pytest.approx(events.Scalars("val/acc")[-1].value,
                                                                              abs=1e-6)
    # The confusion matrix (ConfusionMatrixPlot draws it) is summed over the ranks: each rank kept the
    # whole split's matrix (13 images, not its shard's 7 or 6), the one a single process counts.
    whole = single.model.confusion_matrices["val"]
    assert int(whole.sum()) == 13
    for rank in (0, 1):
        assert torch.equal(torch.load(one_node / f"confusion_rank{rank}.pt", weights_only=True), whole), rank
    # So is the per-class accuracy the DDP run logged (report.py reads these tags).
    per_class = [tag for tag in single.trainer.callback_metrics if tag.startswith("val/acc_per_class/")]
    assert per_class
    for tag in per_class:
        assert events.Scalars(tag)[-1].value == pytest.approx(float(single.trainer.callback_metrics[tag]), abs=1e-6)


def test_two_nodes_by_environment_variables_train_to_the_same_bits_as_one_node(one_node, tiny_data, tmp_path):
    port = free_port()
    machines = [_machine(tmp_path, f"node{rank}", tiny_data) for rank in (0, 1)]
    processes = [
        subprocess.Popen(
            [sys.executable, *_command(data, "--trainer.num_nodes", 2, "--trainer.devices", 1)], cwd=machine,
            # LightningEnvironment: LOCAL_RANK set means "the processes are launched for me".
            env=_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=rank, LOCAL_RANK=0, WORLD_SIZE=2),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank, (machine, data) in enumerate(machines)
    ]
    _wait_all(processes)
    _assert_same_bits(_last_weights(machines[0][0]), _last_weights(one_node))
    _assert_only_rank_zero_wrote(machines[0][0], [machines[1][0]])
    _assert_only_rank_zero_wrote(one_node, [])


def test_two_nodes_through_torchrun_train_to_the_same_bits_as_one_node(one_node, tiny_data, tmp_path):
    port = free_port()
    machines = [_machine(tmp_path, f"node{rank}", tiny_data) for rank in (0, 1)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
             "--node-rank", str(rank), "--rdzv-backend", "static", "--master-addr", "127.0.0.1",
             "--master-port", str(port), *_command(data, "--trainer.num_nodes", 2, "--trainer.devices", 1)],
            cwd=machine, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for rank, (machine, data) in enumerate(machines)
    ]
    _wait_all(processes)
    _assert_same_bits(_last_weights(machines[0][0]), _last_weights(one_node))
    _assert_only_rank_zero_wrote(machines[0][0], [machines[1][0]])


# ---- preemption under SLURM ----------------------------------------------------------------------

JOB_ID = "4242"
SLURM = {"SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "cifar", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
         "SLURM_NNODES": "1", "SLURM_NODEID": "0", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
         "SLURM_NODELIST": "127.0.0.1"}
# 72 tiny images, 12 validated, batches of 16: 4 steps an epoch. SIGUSR1 arrives during the backward pass of
# step 7 (mid-epoch 1), as a real signal lands mid-step; the checkpoint is taken at that step's end.
# The signal tests run without the drawing callbacks (NO_PICTURES), half of each tiny fit; the
# two-node tests above keep them (drawn by global rank 0 only).
SINGLE = ["--data.batch_size", 16, "--trainer.deterministic", "true", "--trainer.max_epochs", 3, *NO_PICTURES]
USR1_AT_6 = ["--trainer.callbacks+=tests.cluster_helpers.SignalsAtStep", "--trainer.callbacks.init_args.step", 6,
             "--trainer.callbacks.init_args.mid_step", "true"]


def _scontrol_stub(folder: Path, end_job: bool = True) -> Path:
    """``scontrol`` that records its arguments and, as SLURM does on a requeue, ends the job with SIGTERM."""
    folder.mkdir()
    stub = folder / "scontrol"
    stub.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n' + ('kill -TERM "$PPID"\n' if end_job else ""))
    stub.chmod(0o755)
    return stub


def test_sigusr1_requeues_and_the_requeued_job_resumes_bit_exactly(tiny_data, run_cli, tmp_path, monkeypatch,
                                                                   one_thread):
    straight = run_cli("fit", *tiny_args(CNN, tiny_data), *SINGLE, "--trainer.logger.init_args.name", "straight")

    stub = _scontrol_stub(tmp_path / "bin")
    log = tmp_path / "scontrol.log"
    env = _env(**SLURM, SCONTROL_LOG=log, PATH=f"{stub.parent}:{clean_env()['PATH']}")
    job = subprocess.run([sys.executable, str(REPO / "cli.py"), "fit", *map(str, [*tiny_args(CNN, tiny_data), *SINGLE,
                          *USR1_AT_6])], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    # SIGUSR1: Lightning saved hpc_ckpt_1.ckpt in default_root_dir (the working folder) and requeued the job,
    # at the end of the step the signal interrupted (callbacks.DeferredRequeue), not in the middle of it.
    assert log.read_text() == f"requeue {JOB_ID}\n"
    hpc = tmp_path / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 7
    # SLURM's SIGTERM then reached the CLI's own path: last.ckpt at the same step, and exit 143.
    assert job.returncode == 143, job.stderr[-3000:]
    last = tmp_path / "lightning_logs" / "cnn" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 7

    for key, value in SLURM.items():
        monkeypatch.setenv(key, value)
    expected = straight.model.state_dict()
    # The requeued job with --ckpt_path last (docs/cluster.md's script): the CLI's own checkpoint, into the same run.
    from_last = run_cli("fit", *tiny_args(CNN, tiny_data), *SINGLE, *USR1_AT_6, "--ckpt_path", "last")
    assert Path(from_last.trainer.ckpt_path).resolve() == last
    assert from_last.trainer.global_step == straight.trainer.global_step == 12
    _assert_same_bits(from_last.model.state_dict(), expected)
    # The same command without it, the same SLURM_JOB_ID: Lightning finds the hpc checkpoint itself (in a new run folder).
    requeued = run_cli("fit", *tiny_args(CNN, tiny_data), *SINGLE, *USR1_AT_6)
    assert Path(requeued.trainer.ckpt_path) == hpc
    assert requeued.trainer.global_step == 12 and requeued.trainer.log_dir.endswith("version_1")
    _assert_same_bits(requeued.model.state_dict(), expected)


def test_under_ddp_one_signalled_rank_makes_every_rank_save_at_the_same_step(tiny_data, tmp_path):
    # srun's two tasks on one node. Only rank 1 gets SIGUSR1 (during backward of step 3): saving is collective,
    # so rank 1 saving alone would hang; the ranks agree and both save at the end of that step. scontrol records
    # only, so training then runs to its end.
    stub = _scontrol_stub(tmp_path / "bin", end_job=False)
    log = tmp_path / "scontrol.log"
    slurm = {**SLURM, "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "MASTER_ADDR": "127.0.0.1",
             "MASTER_PORT": str(free_port())}
    signal_rank_1 = ["--trainer.callbacks+=tests.cluster_helpers.SignalsAtStep", "--trainer.callbacks.init_args.step", 2,
                     "--trainer.callbacks.init_args.mid_step", "true", "--trainer.callbacks.init_args.rank", 1]
    command = [sys.executable, *_command(tiny_data, "--trainer.devices", 2, *signal_rank_1, *NO_PICTURES)]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         env=_env(**{**slurm, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)},
                                  SCONTROL_LOG=log, PATH=f"{stub.parent}:{clean_env()['PATH']}"))
        for rank in (0, 1)
    ]
    _wait_all(processes)
    assert log.read_text() == f"requeue {JOB_ID}\n"  # rank 0 alone requeues
    (hpc,) = tmp_path.glob("hpc_ckpt_*.ckpt")
    assert torch.load(hpc, weights_only=True)["global_step"] == 3

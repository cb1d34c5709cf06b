"""Shared fixtures: tiny image-folder datasets written to disk, and a CLI runner."""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))

_SIZED_HERE = "CIFAR_TESTS_SIZED_OMP_NUM_THREADS"


def size_torch_threads(environ: MutableMapping[str, str], cpu_count: int) -> None:
    """Set ``OMP_NUM_THREADS`` in ``environ`` to the cores per pytest-xdist worker, at most 2; a user's own is kept.

    Keeps CPU tests from oversubscribing the cores that the workers share (-n), and gives in-process runs
    the threads that the subprocesses they are compared with get: results are bit-identical only at equal
    thread counts. Tiny models gain nothing from more than 2. The xdist controller imports this file too,
    before it knows of any workers, and the workers inherit its environment: a value set here is marked, so
    that each worker sizes its own instead of keeping the controller's (2 threads in each of 2 workers made
    OpenMP spin 4 threads on 2 cores and doubled the suite's CPU time).
    """
    workers = int(environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if "OMP_NUM_THREADS" not in environ or environ.get(_SIZED_HERE) == environ["OMP_NUM_THREADS"]:
        environ["OMP_NUM_THREADS"] = environ[_SIZED_HERE] = str(max(1, min(2, cpu_count // workers)))


size_torch_threads(os.environ, os.cpu_count() or 2)
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def ram_temp_root(candidate: Path = Path("/dev/shm"), room: int = 2 << 30) -> Path | None:
    """``candidate`` if it is a writable folder in RAM with ``room`` bytes free, else None.

    The suite writes about 3.5 GB of checkpoints, each fsynced (AtomicCheckpointIO). On this project's
    development machine (ext4 with online discard) a test that only parsed a config waited up to 20 s behind
    other tests' writes; in RAM they cost nothing. The tests' folders of a passing run are removed as they
    pass (``tmp_path_retention_policy`` in pyproject.toml), so a run holds far less than the total at once.
    """
    try:
        stats = os.statvfs(candidate)
    except OSError:  # no such folder: not Linux
        return None
    free = stats.f_bavail * stats.f_frsize
    return candidate if free >= room and os.access(candidate, os.W_OK) and candidate.is_dir() else None


# pytest reads PYTEST_DEBUG_TEMPROOT when it makes its first temporary folder, after this file is imported;
# a user's own setting, or --basetemp, wins. pytest < 7.3 keeps every test's folder (no retention policy).
_PYTEST = tuple(int(part) for part in pytest.__version__.split(".")[:2])
if "PYTEST_DEBUG_TEMPROOT" not in os.environ and _PYTEST >= (7, 3) and (root := ram_temp_root()):
    os.environ["PYTEST_DEBUG_TEMPROOT"] = str(root)

# The suite's longest tests and xdist groups, longest first (docs/test_durations.md): they are collected
# first. pytest-xdist hands tests out in collection order as workers free up, so a long test collected
# late ran alone at the end while the other worker idled; with the long ones first, the short ones fill
# the end. A node id prefix that no longer matches anything moves nothing.
LONGEST_FIRST = (
    "tests/test_cluster.py",  # one xdist group: 2-process DDP runs, two nodes, torchrun
    "tests/test_gpu_check.py::test_smoke_run",
    "tests/test_records.py::test_publish_run",  # publish_run.sh: five cli.py and report.py processes
    "tests/test_predictions.py",  # one xdist group: its fixture's fit and a DDP predict
    "tests/test_unfreeze.py::test_ddp_replicas",
    "tests/test_robustness.py",  # the straight-run group, the signal and DDP NaN runs
    "tests/test_pointing_game.py",
    "tests/test_cli.py::test_every_config_fits_tests_and_draws",
    "tests/test_attributions.py::test_a_compiled_network",
    "tests/test_recipes.py",
    "tests/test_cli.py",
    "tests/test_unfreeze.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: the order within a rank is pytest's
    _name_xdist_groups(config, items)


def _name_xdist_groups(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give each ``xdist_group`` test its ``@group`` suffix, which ``--dist loadgroup`` schedules by.

    pytest 9 keeps a node's id in ``_id``; pytest-xdist 3.8 still writes the suffix to ``_nodeid``,
    which pytest 9 no longer reads, so every group was split over the workers and each module-scoped
    fit (test_cluster's one-node run, test_records' recorded run...) was trained once per worker.
    Where xdist's own suffix took (older pytest), this does nothing.
    """
    if not getattr(config.option, "loadgroup", False):
        return
    try:
        from _pytest.nodeid import coerce_node_id  # pytest >= 9 only, where ``_id`` holds the id
    except ImportError:
        return
    for item in items:
        names = {str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
                 for mark in item.iter_markers("xdist_group")}
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(sorted(names))}")


@pytest.fixture
def one_thread():
    """Run the in-process part of a test on one torch thread, as its ``OMP_NUM_THREADS=1`` subprocesses."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("bird", "cat", "ship"),
    per_class: dict[str, int] | None = None,
    size: int = 32,
    channels: int = 3,
    seed: int = 0,
) -> Path:
    """Write ``root/<split>/<class>/<i>.png`` with a class-dependent mean colour.

    Each class gets its own base colour plus noise, so a model can learn
    something in a few steps, but images are never constant.
    """
    per_class = per_class or {"train": 24, "test": 6}
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = (label + 1) * 255 / (len(classes) + 1)
            for index in range(count):
                pixels = rng.normal(base, 40, size=(size, size, channels)).clip(0, 255).astype(np.uint8)
                mode = "RGB" if channels == 3 else "L"
                Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(folder / f"{index:03d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes, 24 training and 6 test images each, 32x32 RGB PNG."""
    return write_image_folder(tmp_path_factory.mktemp("tiny_cifar"))


@pytest.fixture(scope="session")
def tiny_data_16(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_data`` at 16x16: the ResNets' code paths at a quarter of their work."""
    return write_image_folder(tmp_path_factory.mktemp("tiny_cifar_16"), size=16)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``tiny_data``, but 28x28 grayscale PNG, as MNIST."""
    return write_image_folder(tmp_path_factory.mktemp("tiny_mnist"), size=28, channels=1)


@pytest.fixture
def run_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``cli.py`` in-process from ``tmp_path`` (logs land there); returns the ProjectCLI."""
    import cli

    monkeypatch.chdir(tmp_path)

    def run(*args: str):
        return cli.main([str(a) for a in args])

    return run


# cli.STANDARD_CALLBACKS keys that only draw or score: the schedule tests switch them off (ResNet's
# faithfulness scoring alone is most of a tiny fit's time); test_cli runs every config with them.
PICTURE_KEYS = ("loss_plots", "pictures", "confusion_matrix", "mistakes", "faithfulness")


def pictures_off(keep: tuple[str, ...] = ()) -> list[str]:
    """``--<key> null`` for each of PICTURE_KEYS but ``keep``."""
    return [arg for key in PICTURE_KEYS if key not in keep for arg in (f"--{key}", "null")]


NO_PICTURES = pictures_off()


def config_with_stages(tmp_path: Path, stages: list[dict], source: Path | None = None) -> Path:
    """A copy of ``resnet_cbam.yaml`` whose ProgressiveUnfreeze callback has other ``stages``, without pictures."""
    import yaml

    source = source or REPO / "configs" / "resnet_cbam.yaml"
    config = yaml.safe_load(source.read_text())
    config.update(dict.fromkeys(PICTURE_KEYS))  # `pictures: null` etc.: switched off
    callbacks = config["trainer"]["callbacks"]
    (unfreeze,) = [c for c in callbacks if c["class_path"] == "callbacks.ProgressiveUnfreeze"]
    unfreeze["init_args"]["stages"] = stages
    path = tmp_path / f"{source.stem}_stages.yaml"
    path.write_text(yaml.safe_dump(config))
    return path

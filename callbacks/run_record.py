"""Record what a run was, how long it took and how fast it classifies, for the comparison report.

Accuracy alone does not compare models fairly: the source stressed time to an
accuracy and inference speed as much (SPEC section 5). This callback makes every
run carry those numbers:

- ``run.json`` in the logger's folder: parameter counts, model and data classes
  with their hyperparameters, seed, config name, hardware and library versions;
  rewritten at the end of fit with the totals and the inference speed.
- ``time/epoch_seconds`` at each training epoch end (training plus its
  validation) with ``time/load_average`` (the machine's 1-minute load then),
  and ``time/elapsed_seconds`` at each validation end: the training
  wall time until that ``val/acc`` was known, so accuracy against wall time can
  be read back from TensorBoard by step.
- ``perf/inference_images_per_second`` after fit, measured on a few validation
  batches in inference mode.

Wall time counts epochs only: data decoding, setup, sanity checks and the
inference measurement are left out, so runs that share hardware compare fairly
however their data were loaded. The running total lives in ``state_dict``, so a
resumed run continues its clock instead of restarting it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torchvision
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from torch.utils.data import DataLoader
from typing_extensions import override

from common.lightning_private import user_hparams
from common.precision_choice import cpu_bf16_feature
from common.user_input import UserInputError
from visualization.model_view import ModelView

__all__ = ["RUN_RECORD_FILE", "RunRecorder", "hardware", "versions"]

RUN_RECORD_FILE = "run.json"


def _cpu_model() -> str:
    """The CPU's marketing name; ``platform.processor()`` is often empty on Linux."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> dict[str, Any]:
    """What the run's speed depends on: CPU, cores and threads, and the GPU if the model sits on one."""
    record: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_bf16_feature(),  # AMX, AVX512_BF16 or null: what the precision choice read
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    return record


def versions() -> dict[str, str]:
    """Library versions that change numbers or speed."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "torchvision": torchvision.__version__,
    }


def _jsonable(hparams: Any) -> dict[str, Any]:
    """Hyperparameters hold tuples, paths and callables; keep what JSON can say and name the rest."""
    return json.loads(json.dumps(user_hparams(hparams), default=repr))


class RunRecorder(L.Callback):
    """Write ``run.json`` and log epoch wall time and inference speed.

    Args:
        inference_batches: Validation batches timed for the inference speed
            (the first is also run once untimed, as a warm-up). 0 skips the
            measurement.
    """

    def __init__(self, inference_batches: int = 5) -> None:
        if inference_batches < 0:
            raise UserInputError(
                f"inference_batches={inference_batches} must be 0 or more.\n"
                "HINT: e.g. 5 batches; 0 turns the inference measurement off."
            )
        self.inference_batches = inference_batches
        self.elapsed_seconds = 0.0  # training wall time of the finished epochs, across resumes
        self.epochs_timed = 0
        self._epoch_start: float | None = None
        self._record: dict[str, Any] = {}
        # Why the run trains in its precision (the CLI's automatic choice, or the user's flag).
        self.precision_reason: str | None = None
        self.config_files: list[str] = []  # the CLI's --config files: the recipe a record names

    # ---- resumable state ------------------------------------------------------------

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed_seconds": self.elapsed_seconds, "epochs_timed": self.epochs_timed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.elapsed_seconds = float(state_dict.get("elapsed_seconds", 0.0))
        self.epochs_timed = int(state_dict.get("epochs_timed", 0))

    # ---- the record --------------------------------------------------------------------

    @staticmethod
    def _enabled(trainer: L.Trainer) -> bool:
        # fast_dev_run swaps in a dummy logger with no folder: nothing to record into.
        return not trainer.fast_dev_run and bool(trainer.loggers) and trainer.log_dir is not None

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled(trainer):
            return
        logger = trainer.loggers[0]
        datamodule = trainer.datamodule
        # trainer.log_dir broadcasts under DDP: every rank must ask, so ask here, not in the rank-zero write.
        self._log_dir = Path(trainer.log_dir)
        self._record = {
            "config_name": logger.name,
            "config_files": self.config_files,
            "version": logger.version,
            "seed": _global_seed(),
            "model_class": type(pl_module).__qualname__,
            "parameters": sum(p.numel() for p in pl_module.parameters()),
            "trainable_parameters": sum(p.numel() for p in pl_module.parameters() if p.requires_grad),
            "model_hparams": _jsonable(pl_module.hparams),
            "data_class": type(datamodule).__qualname__ if datamodule is not None else None,
            "data_hparams": _jsonable(datamodule.hparams) if datamodule is not None else None,
            "max_epochs": trainer.max_epochs,
            "precision": str(trainer.precision),
            "precision_reason": self.precision_reason,
            "num_devices": trainer.num_devices,
            "num_nodes": trainer.num_nodes,
            "hardware": hardware(pl_module.device),
            "versions": versions(),
            "resumed_from": _absolute(trainer.ckpt_path),
            "commit": git_commit(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "finished_at": None,
        }
        self._record["segments"] = [*self._earlier_segments(trainer), _segment(self._record)]
        self._write(trainer)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Here, not at fit start: a resume restores the loops' progress between the two.
        if self._record.get("segments"):
            self._record["segments"][-1].update(epochs_before=trainer.current_epoch, steps_before=trainer.global_step)
            self._write(trainer)

    def _earlier_segments(self, trainer: L.Trainer) -> list[dict[str, Any]]:
        """The segments of the fit before this resume, from the run.json it leaves in the same folder.

        A run cut and resumed (a preemption, a session's end) may train its parts on other commits, with
        other thread counts: the top-level fields describe the last part only, the segments all of them.
        """
        path = self._log_dir / RUN_RECORD_FILE
        if trainer.ckpt_path is None or not path.is_file():
            return []
        try:
            earlier = json.loads(path.read_text())
            segments = earlier.get("segments") or [_segment(earlier)]  # a run.json from before segments
        except (OSError, ValueError, AttributeError) as error:
            rank_zero_warn(f"{path} is unreadable ({error}); the record of this run starts at this resume.")
            return []
        return [segment for segment in segments if isinstance(segment, dict)]

    @rank_zero_only
    def _write(self, trainer: L.Trainer) -> None:
        path = self._log_dir / RUN_RECORD_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self._record, indent=2) + "\n")

    # ---- wall time ----------------------------------------------------------------------

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self._epoch_start is None:
            return
        elapsed = self.elapsed_seconds + time.perf_counter() - self._epoch_start
        pl_module.log("time/elapsed_seconds", elapsed, on_epoch=True, rank_zero_only=True)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._epoch_start is None:
            return
        seconds = time.perf_counter() - self._epoch_start
        self._epoch_start = None
        self.elapsed_seconds += seconds
        self.epochs_timed += 1
        pl_module.log("time/epoch_seconds", seconds, on_epoch=True, rank_zero_only=True)
        if hasattr(os, "getloadavg"):  # how busy the machine was: seconds under load are not quiet seconds
            pl_module.log("time/load_average", os.getloadavg()[0], on_epoch=True, rank_zero_only=True)

    # ---- inference speed ------------------------------------------------------------------

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._enabled(trainer):
            return
        images_per_second = self.measure_inference(trainer, pl_module)
        if images_per_second is not None:
            for logger in trainer.loggers:
                logger.log_metrics({"perf/inference_images_per_second": images_per_second}, step=trainer.global_step)
        self._record.update(
            {
                "elapsed_seconds": self.elapsed_seconds,
                "epochs_timed": self.epochs_timed,
                "inference_images_per_second": images_per_second,
                "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
        )
        self._write(trainer)

    def measure_inference(self, trainer: L.Trainer, pl_module: L.LightningModule) -> float | None:
        """Images per second of the model's forward pass on validation batches, or ``None`` without any.

        The batches are fetched and moved to the device before the clock starts:
        this measures the model, not the loader.
        """
        batches = list(self._validation_batches(trainer, pl_module))
        if not batches:
            rank_zero_warn("RunRecorder: no validation batches to time inference with; perf/* not logged.")
            return None
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.inference_mode(), trainer.precision_plugin.forward_context():
                pl_module(batches[0])  # warm-up: lazy initialisation, allocator, kernel selection
                _synchronize(pl_module.device)
                start = time.perf_counter()
                for images in batches:
                    pl_module(images)
                _synchronize(pl_module.device)
                seconds = time.perf_counter() - start
        finally:
            pl_module.train(was_training)  # leave the caller's mode as it was
        return sum(len(images) for images in batches) / max(seconds, 1e-9)

    def _validation_batches(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator[torch.Tensor]:
        if self.inference_batches == 0:
            return
        datamodule = trainer.datamodule
        loaders = trainer.val_dataloaders
        if loaders is None and datamodule is not None:
            loaders = datamodule.val_dataloader()
        loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
        if loader is None:
            return
        if isinstance(loader, DataLoader) and loader.num_workers > 0:
            # The same batches in this process. Iterated, the loader would fork its workers anew for a few
            # batches (validation has shut them down by now) and, persistent, keep them: the processes then
            # outlived the fit, and their shutdown at a later garbage collection waited 5 s a worker.
            # Without a batch sampler (batch_size=None) the loader yields its samples unbatched; so does this one.
            batching = ({"batch_sampler": loader.batch_sampler} if loader.batch_sampler is not None
                        else {"sampler": loader.sampler, "batch_size": None})
            loader = DataLoader(loader.dataset, collate_fn=loader.collate_fn, **batching)
        for index, batch in enumerate(loader):
            if index == self.inference_batches:
                return
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            images = pl_module.transfer_batch_to_device(images, pl_module.device, 0)
            # What the model sees, as the pictures and scores get it: floats, pixel-permuted if the data are.
            yield ModelView.of_datamodule(datamodule, images.shape[-2] * images.shape[-1])(images)


def _absolute(path: str | os.PathLike | None) -> str | None:
    """A local checkpoint path made absolute (a record outlives the working directory); a URL as it is."""
    if path is None or "://" in str(path):
        return None if path is None else str(path)
    return os.path.abspath(path)


def _segment(record: dict[str, Any]) -> dict[str, Any]:
    """What one uninterrupted part of a fit ran on (its progress when it began: set at train start)."""
    hardware = record.get("hardware") or {}
    return {
        "started_at": record.get("started_at"),
        "epochs_before": None,
        "steps_before": None,
        "commit": record.get("commit"),
        "torch_threads": hardware.get("torch_threads"),
        "device": hardware.get("gpu") or hardware.get("device"),
        "precision": record.get("precision"),
        "resumed_from": record.get("resumed_from"),
    }


def git_commit(root: Path = Path(__file__).resolve().parent.parent) -> str | None:
    """The project's git commit, ``+dirty`` with uncommitted changes; ``None`` outside a checkout.

    Changes under ``results/`` do not count: they are published runs (``report.py --record-to``
    rewrites them while others train), not the code a run trains with.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!results"],
                               cwd=root, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _global_seed() -> int | None:
    """The seed ``seed_everything`` (the CLI's ``seed_everything``) set, if any."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None and seed.lstrip("-").isdigit() else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

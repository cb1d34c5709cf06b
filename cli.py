"""Command-line entry: ``python cli.py fit --config configs/cnn.yaml``.

A LightningCLI over every architecture in ``lightning_modules`` and every
datamodule in ``datamodules``. What the data decide (class count, image shape,
normalisation) is linked into the model, never typed twice. Runs log to
``lightning_logs/<config name>/version_N``; ``--ckpt_path last`` (fit) and
``--ckpt_path best`` (validate/test/predict) find the newest run of that name on
disk and continue logging into it.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks import (
    AtomicCheckpointIO,
    DeferredRequeue,
    LastCheckpoint,
    RNGStateCheckpoint,
    RunRecorder,
    StopOnNonFiniteLoss,
)
from callbacks.fault_tolerance import NonFiniteLossError
from datamodules import ImageDataModule
from datamodules.image_folder import DataError
from lightning_modules import ImageClassifier
from lightning_modules.resnet import PretrainedWeightsError

# Errors raised while building the model, data and callbacks from the config are
# the user's input: they exit with status 2, like any other bad argument.
CONFIG_ERRORS = (ValueError, TypeError, KeyError, PretrainedWeightsError)


class ProjectCLI(LightningCLI):
    """LightningCLI with data-to-model links, best/last checkpoints and on-disk run lookup."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for key in ("num_classes", "input_shape", "mean", "std"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_top_k": 1,
            }
        )
        parser.add_lightning_class_args(LastCheckpoint, "last_checkpoint")
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "default"},
                }
            }
        )

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        wanted = {"fit": "last"}.get(self.subcommand, "best")
        if ckpt_path in ("last", "best") and (ckpt_path == wanted or self.subcommand != "fit"):
            self._resolve_run_checkpoint(config, ckpt_path)

    def _resolve_run_checkpoint(self, config: Any, which: str) -> None:
        """Turn ``last``/``best`` into the file of the newest run of this config, and log into that run."""
        logger = config.trainer.logger
        init_args = getattr(logger, "init_args", None)
        if init_args is None or "save_dir" not in init_args:
            return  # a custom logger: leave the lookup to Lightning
        run_root = Path(init_args.save_dir) / (init_args.get("name") or "")
        pattern = "last.ckpt" if which == "last" else "best-*.ckpt"
        found = sorted(run_root.glob(f"version_*/checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime)
        if not found:
            if which == "last":
                print(f"No last.ckpt under {run_root}: starting a new run.", file=sys.stderr)
                config.ckpt_path = None
                return
            self.parser.error(
                f"ckpt_path=best: no best-*.ckpt under {run_root}/version_*/checkpoints.\n"
                "HINT: run `fit` with this config first, or pass --ckpt_path path/to/file.ckpt."
            )
        config.ckpt_path = str(found[-1])
        version = found[-1].parent.parent.name.removeprefix("version_")
        init_args.version = int(version) if version.isdigit() else found[-1].parent.parent.name

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        # Atomic checkpoint writes unless the config brings its own plugins.
        if not self._get(self.config_init, "trainer", default={}).get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except CONFIG_ERRORS as error:
            self.parser.error(_user_message(error))


def _user_message(error: BaseException) -> str:
    """The message of our own error inside jsonargparse's wrapping, which lists every union subtype."""
    message = str(error)
    cause: BaseException | None = error
    while cause is not None:
        if "HINT:" in str(cause):
            message = str(cause)  # keep the innermost: the wrappers repeat it amid noise
        cause = cause.__cause__ or cause.__context__
    return message


def main(args: list[str] | None = None) -> ProjectCLI:
    try:
        return ProjectCLI(
            ImageClassifier,
            ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={
                # DeferredRequeue: SLURM's SIGUSR1 checkpoint at a step boundary (docs/cluster.md)
                "callbacks": [RNGStateCheckpoint(), RunRecorder(), StopOnNonFiniteLoss(), DeferredRequeue()]
            },
            args=args,
        )
    except SIGTERMException as stop:  # Lightning exits 0 on SIGTERM; a scheduler must see the job did not finish
        print("Stopped by SIGTERM. Resume with --ckpt_path last.", file=sys.stderr)
        raise SystemExit(128 + signal.SIGTERM) from stop
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from error
    except DataError as error:  # found once the data are read, after the config was accepted
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()

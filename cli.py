"""Command-line entry: ``python cli.py fit --config configs/cnn.yaml``.

A LightningCLI over every architecture in ``lightning_modules`` and every
datamodule in ``datamodules``. What the data decide (class count, image shape,
normalisation) is linked into the model, never typed twice. Runs log to
``lightning_logs/<config name>/version_N``, under ``--trainer.default_root_dir``
when one is given; ``--ckpt_path last`` (fit) and ``--ckpt_path best``
(validate/test/predict) find the newest run of that name on disk and continue
logging into it. ``--trainer.enable_checkpointing false`` runs without any.

What every run gets is declared once, in ``STANDARD_CALLBACKS``, not copied into
each recipe: each callback is a config key and a flag group of its own
(``--pictures.every_n_epochs 2``, or ``pictures: {every_n_epochs: 2}`` in a
config), switched off with ``--pictures null``. The Grad-CAM callbacks explain
the layers the model names (``explainable_layers``) and are left out for a
model without any (the MLPs).

Mistakes in the user's input (``UserInputError``) exit with status 2 and a
``HINT:``; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import shutil
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from callbacks import (
    AtomicCheckpointIO,
    ConfusionMatrixPlot,
    DeferredRequeue,
    FaithfulnessScores,
    FiniteCheckpoint,
    InterpretabilityDumps,
    LastCheckpoint,
    LossPlots,
    MistakeGallery,
    PredictionWriter,
    RNGStateCheckpoint,
    RunRecorder,
    StopOnNonFiniteLoss,
)
from callbacks.fault_tolerance import NonFiniteLossError
from datamodules import ImageDataModule
from lightning_modules import ImageClassifier
from common.lightning_private import SubcommandFailureHook, quoted_user_error, replace_help
from common.precision_choice import PrecisionChoice, choose_precision
from common.user_input import UserInputError, user_input_errors_raised

# The checkpoint callbacks every run gets unless checkpointing is turned off.
CHECKPOINT_KEYS = ("checkpoint", "last_checkpoint")

# What every run gets besides checkpoints, by config key (README, "What every run gets").
# `--<key>.<arg> value` or `<key>: {<arg>: value}` changes a setting; `--<key> null` switches it off.
STANDARD_CALLBACKS: dict[str, type[Callback]] = {
    "lr_monitor": LearningRateMonitor,  # each parameter group's rate, at its scheduler's interval
    "predictions": PredictionWriter,  # predict: <run folder>/predictions.csv
    "confusion_matrix": ConfusionMatrixPlot,  # confusion_matrix/val, confusion_matrix/test
    "loss_plots": LossPlots,  # loss/iterations, loss/epochs and plots/*.png
    "mistakes": MistakeGallery,  # mistakes/val, mistakes/test: surest errors, Grad-CAM
    "pictures": InterpretabilityDumps,  # gradcam/*, features/*, attention/* (docs/pictures.md)
    "faithfulness": FaithfulnessScores,  # faithfulness/<metric>/<method> scalars (docs/pictures.md)
    "nan_stop": StopOnNonFiniteLoss,  # every rank stops at the first NaN/Inf loss (check_every_n_steps: 1)
}
# The ones that explain conv layers: left out for a model whose network names none (the MLPs).
EXPLAINING_KEYS = ("mistakes", "pictures", "faithfulness")


class ProjectCLI(SubcommandFailureHook, LightningCLI):
    """LightningCLI with data-to-model links, best/last checkpoints and on-disk run lookup."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        argv = kwargs.get("args")
        argv = sys.argv[1:] if argv is None else argv
        # The subcommand named first, when there is one: only its parser is built (below).
        self._named_subcommand = argv[0] if isinstance(argv, list) and argv else None
        super().__init__(*args, **kwargs)

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        """Lightning's subcommands, or only the one named first on the command line.

        LightningCLI builds a full parser (every class signature) per subcommand before it parses:
        for ``fit`` the other three were half of the start-up (0.6 of 1.2 s here), paid by every run,
        DDP rank and test. Without a subcommand first (``cli.py --help``, a typo) all four are built, so
        the usage and the error list them as before.
        """
        every = LightningCLI.subcommands()
        return {self._named_subcommand: every[self._named_subcommand]} if self._named_subcommand in every else every

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        _explain_project_flags(parser)
        for key in ("num_classes", "input_shape", "mean", "std"):
            parser.link_arguments(f"data.{key}", f"model.init_args.{key}", apply_on="instantiate")
        # Added as plain class groups, not as Lightning's callback keys, so that
        # instantiate_trainer can leave them out under enable_checkpointing=False.
        parser.add_class_arguments(FiniteCheckpoint, "checkpoint", fail_untyped=False, sub_configs=True)
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best-epoch{epoch:03d}-acc{val/acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
                "checkpoint.save_top_k": 1,
            }
        )
        parser.add_class_arguments(LastCheckpoint, "last_checkpoint", fail_untyped=False, sub_configs=True)
        # Optional subclass groups, not plain class groups: a config or a flag can set one to null.
        for key, callback in STANDARD_CALLBACKS.items():
            parser.add_subclass_arguments(callback, key, required=False, fail_untyped=False)
            parser.set_defaults({key: {"class_path": f"{callback.__module__}.{callback.__qualname__}"}})
        parser.set_defaults(
            {
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "lightning_logs", "name": "default"},
                }
            }
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # Here, not in add_arguments_to_parser: ckpt_path joins each subcommand's parser after that hook.
        replace_help(parser, PROJECT_HELP)
        super().parse_arguments(parser, args)

    def before_instantiate_classes(self) -> None:
        if self.subcommand is None:
            return
        config = self.config[self.subcommand]
        _place_under_root_dir(config.trainer)
        self.precision_choice = _settle_precision(config.trainer)
        rank_zero_info(self.precision_choice.line())
        # validate/test/predict on a fitted run log into its folder: keep its fit config.yaml intact.
        if self.subcommand != "fit":
            self.save_config_kwargs["config_filename"] = f"config_{self.subcommand}.yaml"
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
        version = init_args.get("version")
        if version is not None:  # a pinned run (e.g. one per seed): look in it alone
            run_root /= version if isinstance(version, str) else f"version_{version}"
            found = sorted(run_root.glob(f"checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime)
        else:
            found = sorted(run_root.glob(f"version_*/checkpoints/{pattern}"), key=lambda p: p.stat().st_mtime)
        if not found:
            if which == "last":
                _tell(f"No last.ckpt under {run_root}: starting a new run.")
                config.ckpt_path = None
                return
            searched = run_root / ("checkpoints" if version is not None else "version_*/checkpoints")
            self.parser.error(
                f"ckpt_path=best: no best-*.ckpt in {searched}.\n"
                "HINT: run `fit` with this config first, or pass --ckpt_path path/to/file.ckpt."
            )
        config.ckpt_path = str(found[-1])
        if version is not None:
            return
        version = found[-1].parent.parent.name.removeprefix("version_")
        init_args.version = int(version) if version.isdigit() else found[-1].parent.parent.name

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self.config_init.get(str(self.subcommand), self.config_init)
        trainer = config.get("trainer") or {}
        kwargs.setdefault("plugins", _with_atomic_checkpoints(trainer.get("plugins")))
        callbacks = trainer.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        callbacks += self._standard_callbacks(config, callbacks)
        if trainer.get("logger") is False:  # a rate monitor has nowhere to log: leave it out
            callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
        if trainer.get("enable_checkpointing") is not False:
            callbacks += [config[key] for key in CHECKPOINT_KEYS]
        trainer = super().instantiate_trainer(**kwargs, callbacks=callbacks)
        self._new_run_dir = _new_run_dir(trainer)
        choice = getattr(self, "precision_choice", None)
        # The config files the run was given (--config), absolute: its record names the recipe by them.
        given = self.config.get(str(self.subcommand), {}).get("config") or [] if self.subcommand else []
        for callback in trainer.callbacks:
            if isinstance(callback, RunRecorder):
                callback.config_files = [str(getattr(path, "absolute", path)) for path in given]
                if choice is not None:
                    callback.precision_reason = choice.reason
        return trainer

    def on_subcommand_failure(self) -> None:
        """A run that fails before its first training step leaves no empty ``version_N`` behind."""
        _remove_failed_start(self.trainer, getattr(self, "_new_run_dir", None))

    def _standard_callbacks(self, config: Any, listed: list[Callback]) -> list[Callback]:
        """The ``STANDARD_CALLBACKS`` not switched off and applying to the model.

        Raises:
            UserInputError: ``trainer.callbacks`` lists one of them too (two writers of one file).
        """
        for callback in listed:
            key = next((key for key, kind in STANDARD_CALLBACKS.items() if type(callback) is kind), None)
            if key is not None:
                raise UserInputError(
                    f"trainer.callbacks lists {type(callback).__name__}, which every run already gets as `{key}`.\n"
                    f"HINT: remove it from trainer.callbacks; set its options under `{key}:` in the config "
                    f"(or --{key}.<option>), or switch it off with `{key}: null`."
                )
        explains = bool(getattr(self.model, "explainable_layers", ()))
        return [
            config[key]
            for key in STANDARD_CALLBACKS
            if config.get(key) is not None and (explains or key not in EXPLAINING_KEYS)
        ]

    def instantiate_classes(self) -> None:
        with user_input_errors_raised() as raised:
            try:
                super().instantiate_classes()
            except Exception as error:
                user_error = _user_input_error(error, raised)
                if user_error is None:
                    raise  # a bug, not a bad config: keep the traceback
                self.parser.error(str(user_error))


def _with_atomic_checkpoints(plugins: Any) -> list[Any]:
    """The user's ``--trainer.plugins`` plus ``AtomicCheckpointIO``, unless they bring a checkpoint writer of their own."""
    plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
    own = [p for p in plugins if isinstance(p, CheckpointIO)]
    if own:
        rank_zero_warn(
            f"--trainer.plugins brings its own checkpoint writer ({type(own[0]).__name__}): checkpoints are not "
            "written atomically (AtomicCheckpointIO), and NaN weights are not refused."
        )
        return plugins
    return [*plugins, AtomicCheckpointIO()]


def _new_run_dir(trainer: L.Trainer) -> Path | None:
    """The run folder this command will create (a new ``version_N``), or None when it exists or is not local."""
    try:
        folder = trainer.log_dir
    except Exception:  # a logger without a folder (e.g. a remote one)
        return None
    if folder is None or "://" in str(folder) or Path(folder).exists():
        return None
    return Path(folder)


def _remove_failed_start(trainer: L.Trainer | None, folder: Path | None) -> None:
    """Remove the run folder a failed command created if nothing was trained into it (rank zero removes)."""
    if trainer is None or folder is None or trainer.global_step > 0 or not folder.is_dir():
        return
    if any(folder.rglob("*.ckpt")):
        return  # something a resume can use: keep it
    if trainer.is_global_zero:
        shutil.rmtree(folder, ignore_errors=True)


DESCRIPTION = (
    "CIFAR-10 classification with attention-augmented CNNs, and tools to see inside them. "
    "Train, test and predict with one recipe from configs/, e.g. "
    "`python cli.py fit --config configs/cnn_fast.yaml`. Recipes: {configs}."
)
HELP_EPILOG = (
    "The model's and the data's own options (--model.attention, --model.compile, --data.val_size, ...) "
    "are listed by --model.help CLASS and --data.help CLASS, e.g. `python cli.py fit --model.help "
    "CNNClassifier` or `python cli.py fit --data.help CIFAR10DataModule`; a config's complete settings by "
    "`python cli.py fit --config configs/cnn_fast.yaml --print_config`."
)
PROJECT_HELP = {
    "trainer.precision": (
        "Numeric precision. Left unset, the run chooses: bf16-mixed where the device runs bf16 natively "
        "(a CPU with AMX or AVX512_BF16, an NVIDIA GPU from Ampere on), else 32-true; it prints the choice "
        "and its reason at start. Give 32-true, bf16-mixed, 16-mixed, ... to choose yourself."
    ),
    "ckpt_path": (
        "A checkpoint file, or 'last' (fit: resume the newest run of this config, its logger's "
        "save_dir/name, from its last.ckpt, logging into the same folder; a fresh run when there is none) "
        "or 'best' (validate/test/predict: the best-val/acc checkpoint of the newest run of this config)."
    ),
}


def _explain_project_flags(parser: LightningArgumentParser) -> None:
    """Where the model's and data's own options are; the flags' own texts are replaced in ``parse_arguments``."""
    parser.epilog = HELP_EPILOG


def _settle_precision(trainer: Any) -> PrecisionChoice:
    """Keep a precision the user gave; otherwise bf16 where the device runs it natively (common.precision_choice)."""
    given = trainer.get("precision")
    if given is not None:
        return PrecisionChoice(str(given), "given by --trainer.precision or the config")
    choice = choose_precision(trainer.get("accelerator"))
    trainer.precision = choice.precision
    return choice


def _place_under_root_dir(trainer: Any) -> None:
    """Resolve relative logger ``save_dir``s under ``default_root_dir``, as Lightning's default logger is."""
    root = trainer.get("default_root_dir")
    if not root:
        return
    root = Path(root)
    loggers = trainer.logger if isinstance(trainer.logger, list) else [trainer.logger]
    for logger in loggers:
        init_args = getattr(logger, "init_args", None)
        if init_args is None or not init_args.get("save_dir"):
            continue
        save_dir = Path(init_args.save_dir)
        already_there = save_dir.parts[: len(root.parts)] == root.parts  # e.g. a saved config.yaml run again
        if not save_dir.is_absolute() and not already_there:
            init_args.save_dir = str(root / save_dir)


def _user_input_error(error: BaseException, raised: list[UserInputError]) -> UserInputError | None:
    """The ``UserInputError`` behind ``error``, else None.

    jsonargparse may chain ours under its own ``ValueError``, or only quote it
    in its message (``raised`` holds the ones made meanwhile): either counts.
    """
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserInputError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return quoted_user_error(error, raised)


def _tell(message: str) -> None:
    """Write ``message`` and its newline to stderr in one write.

    ``print`` writes the text and the newline separately, so under DDP another rank's message could land between
    them and two messages shared a line.
    """
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def main(args: list[str] | None = None, run: bool = True) -> ProjectCLI:
    """Parse ``args`` (default: ``sys.argv``) and run the subcommand; ``run=False``: build the classes only."""
    # Lightning's summary sizes parameters at 32 bits under mixed precision and says so on every run.
    # Filtered for this call only: an in-process caller (a notebook, the tests) gets its filters back.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision bf16-mixed is not supported by the model summary")
        return _run(args, run)


def _run(args: list[str] | None, run: bool) -> ProjectCLI:
    try:
        return ProjectCLI(
            ImageClassifier,
            ImageDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"description": DESCRIPTION.format(
                configs=", ".join(sorted(path.stem for path in (Path(__file__).parent / "configs").glob("*.yaml"))))},
            trainer_defaults={
                # DeferredRequeue: SLURM's SIGUSR1 checkpoint at a step boundary (docs/cluster.md)
                "callbacks": [RNGStateCheckpoint(), RunRecorder(), DeferredRequeue()]
            },
            args=args,
            run=run,
        )
    except SIGTERMException as stop:  # Lightning exits 0 on SIGTERM; a scheduler must see the job did not finish
        _tell("Stopped by SIGTERM. Resume with --ckpt_path last.")
        raise SystemExit(128 + signal.SIGTERM) from stop
    except NonFiniteLossError as error:
        _tell(f"error: {error}")
        raise SystemExit(1) from error
    except UserInputError as error:  # found once training runs (data read, schedule checked), after parsing
        _tell(f"error: {error}")
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()

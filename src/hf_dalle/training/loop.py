"""The training loop shared by the training scripts: Accelerate set-up, AdamW and its schedule, gradient
accumulation, clipping, skipping non-finite steps, EMA, resumable checkpoints, PowerSGD, and logging.

A script builds its model and data, then calls `train(TrainingConfig.from_args(args), ...)` with a
`loss_fn(model, batch, step)` that returns the loss and the metrics to log; everything else is here.
"""

import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..io_utils import write_file_atomically
from .arguments import TrainingConfig
from .checkpointing import TrainingState, load_checkpoint, resolve_checkpoint, save_checkpoint
from .run_folder import RunFolder


logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """Raised when too many optimizer steps in a row had a non-finite loss or gradient."""


def create_accelerator(config: TrainingConfig) -> Accelerator:
    """An `Accelerator` for the common flags, seeded with `--seed` (same seed on every process: identical initial
    weights; each process still sees different data)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if config.overwrite_output_dir and config.resume_from_checkpoint is None:
        # Before Accelerate writes into it; one process deletes, the others wait (PartialState: no Accelerator yet).
        processes = PartialState()
        if processes.is_main_process:
            RunFolder(config.output_dir).clear()
        processes.wait_for_everyone()
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        log_with=None if config.report_to == "none" else config.report_to,
        project_config=ProjectConfiguration(
            project_dir=config.output_dir, logging_dir=str(RunFolder(config.output_dir).logs_dir)
        ),
        # Shuffle order = f(seed, epoch): a resumed run sees the same batches as an uninterrupted one.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one line per file of every checkpoint otherwise
    if not accelerator.is_local_main_process:
        logging.getLogger().setLevel(logging.WARNING)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        # Each process would train alone and write the same files.
        raise RuntimeError(
            f"Launched as {launched} processes, but Accelerate runs this one as a single process. On CPU, set "
            "ACCELERATE_USE_CPU=1 (e.g. `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ...`)."
        )
    set_seed(config.seed)
    return accelerator


def create_optimizer(config: TrainingConfig, model: torch.nn.Module) -> torch.optim.AdamW:
    """AdamW; weight decay on tensors of 2 or more dimensions (weight matrices, kernels, embeddings), not on biases
    and norm scales."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.adam_weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
    )


def create_lr_scheduler(config: TrainingConfig, optimizer: torch.optim.Optimizer, num_processes: int):
    # A prepared scheduler steps once per process at each optimizer step (diffusers' convention), hence the factor.
    return get_scheduler(
        config.lr_scheduler,
        optimizer,
        num_warmup_steps=config.lr_warmup_steps * num_processes,
        num_training_steps=config.max_train_steps * num_processes,
    )


def register_powersgd_hook(accelerator: Accelerator, model: torch.nn.Module, rank: int, start_step: int) -> bool:
    """Compress the DDP gradient all-reduce with PowerSGD (rank `rank`, error feedback, plain all-reduce for the first
    `start_step` steps). Returns whether it was registered (only a multi-process DDP run has a DDP model)."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        logger.warning(
            "--powersgd_rank is ignored: this is not a multi-process DDP run (%s).", accelerator.distributed_type
        )
        return False
    state = powerSGD_hook.PowerSGDState(
        process_group=None, matrix_approximation_rank=rank, start_powerSGD_iter=max(start_step, 2)
    )
    model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
    logger.info(
        "Compressing the gradient all-reduce with PowerSGD of rank %d from step %d.", rank, state.start_powerSGD_iter
    )
    return True


class MetricsLogger:
    """Averages metrics over the logging interval on the device (no host sync between logs), then writes them to the
    trackers, the console and the run's metrics file, `logs/metrics.jsonl` (main process)."""

    def __init__(self, accelerator: Accelerator, path: str | os.PathLike):
        self.accelerator = accelerator
        self.path = Path(path)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self.last_training: dict[str, float] = {}
        self.last_validation: dict[str, float] = {}
        self._clock = time.perf_counter()
        self._steps_at_clock = 0

    def add(self, metrics: dict[str, torch.Tensor | float]) -> None:
        for name, value in metrics.items():
            value = torch.as_tensor(value).detach().to(self.accelerator.device, torch.float32)
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
            self.counts[name] = self.counts.get(name, 0) + 1

    def log(self, step: int, extra: dict[str, float]) -> dict[str, float]:
        if not self.sums:
            return {}
        names = sorted(self.sums)
        means = self.accelerator.reduce(torch.stack([self.sums[n] / self.counts[n] for n in names]), reduction="mean")
        now = time.perf_counter()
        logs = dict(zip(names, means.tolist()))
        logs.update(extra, steps_per_second=(step - self._steps_at_clock) / max(now - self._clock, 1e-9))
        self.sums, self.counts, self._clock, self._steps_at_clock = {}, {}, now, step
        self.last_training = logs
        self.write(step, logs)
        return logs

    def log_validation(self, step: int, values: dict[str, float]) -> None:
        """Metrics computed on the main process (validation), written as they are."""
        self.last_validation.update(values)
        self.write(step, values)

    @property
    def last(self) -> dict[str, float]:
        """The latest training averages and validation metrics (for the model card)."""
        return {**self.last_training, **self.last_validation}

    def forget_after(self, step: int) -> None:
        """Drop the lines past `step` from `metrics.jsonl` (main process): a run resumed from the checkpoint of `step`
        logs the later steps again, and an interrupted run may have logged some of them (and half a line when
        killed while writing one)."""
        if not self.accelerator.is_main_process or not self.path.is_file():
            return

        def logged_step(line: str) -> float:
            try:
                return json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                return math.inf

        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and logged_step(line) <= step]
        if len(kept) != len(lines):
            write_file_atomically(self.path, lambda temporary: temporary.write_text("".join(kept)))

    def write(self, step: int, values: dict[str, float]) -> None:
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as file:
                file.write(json.dumps({"step": step, **values}) + "\n")
            logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4g}" for k, v in values.items()))


def _without_moving_the_rng(dataloader):
    """Iterate `dataloader` with the global torch RNG left as it was: the loader that skips the batches a resumed run
    already saw draws seeds that an uninterrupted run does not, and the training noise must not depend on that."""
    iterator = iter(dataloader)
    while True:
        with torch.random.fork_rng(devices=[]):
            batch = next(iterator, None)
        if batch is None:
            return
        yield batch


def _epochs(accelerator: Accelerator, dataloader, state: TrainingState, train_batch_size: int):
    """The batches of epoch after epoch from where `state` stands (the batches of its epoch already seen skipped),
    counted in `state.epoch` and `state.batches_in_epoch`."""
    while True:
        dataloader.set_epoch(state.epoch)
        batches = dataloader
        if state.batches_in_epoch:
            batches = accelerator.skip_first_batches(dataloader, state.batches_in_epoch)
        for batch in _without_moving_the_rng(batches):
            state.batches_in_epoch += 1
            yield batch
        # A run resumed from a checkpoint taken at the epoch's last batch has nothing left to skip to: next epoch.
        if state.batches_in_epoch == 0:
            raise ValueError(
                "The training data yields no batch: it has fewer examples per process than --train_batch_size "
                f"({train_batch_size})."
            )
        state.epoch += 1
        state.batches_in_epoch = 0


def _resume(
    config: TrainingConfig,
    accelerator: Accelerator,
    state: TrainingState,
    ema: EMAModel | None,
    metrics: MetricsLogger,
    train_dataloader,
) -> None:
    """`--resume_from_checkpoint`: load the checkpoint into the prepared objects, `state` and `ema`, and drop the
    metrics logged after it ('latest' with no checkpoint yet starts again from step 0). A checkpoint whose progress
    does not fit this run (past --max_train_steps, or further into an epoch than the data has batches) is refused."""
    if config.resume_from_checkpoint is None:
        return
    allow_inexact = config.allow_inexact_resume
    checkpoint = resolve_checkpoint(config.output_dir, config.resume_from_checkpoint, allow_inexact)
    if checkpoint is not None:
        load_checkpoint(accelerator, checkpoint, state, ema, allow_inexact)
        try:
            batches_per_epoch = len(train_dataloader)
        except TypeError:  # a streamed dataset: no length
            batches_per_epoch = None
        if state.global_step > config.max_train_steps:
            raise ValueError(
                f"{checkpoint} is at step {state.global_step}, past --max_train_steps {config.max_train_steps}."
            )
        if batches_per_epoch is not None and state.batches_in_epoch > batches_per_epoch:
            raise ValueError(
                f"{checkpoint} is at batch {state.batches_in_epoch} of its epoch, but the data has "
                f"{batches_per_epoch} batches per epoch: resume with the data and --train_batch_size it was saved "
                "with."
            )
        logger.info(
            "Resumed from %s at step %d (epoch %d, batch %d).",
            checkpoint,
            state.global_step,
            state.epoch,
            state.batches_in_epoch,
        )
    metrics.forget_after(state.global_step)


def _optimizer_step(
    accelerator: Accelerator, model: torch.nn.Module, optimizer, lr_scheduler, max_grad_norm: float
) -> tuple[torch.Tensor, bool]:
    """Clip the complete gradients and take the optimizer step, unless their norm is not finite. Returns the norm and
    whether the step was taken."""
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    finite = bool(torch.isfinite(grad_norm))
    # fp16: the gradient scaler must see every step to lower its scale; it skips non-finite ones.
    if finite or accelerator.scaler is not None:
        optimizer.step()
    stepped = finite and not accelerator.optimizer_step_was_skipped
    if stepped:
        lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm, stepped


def _count_skipped_step(state: TrainingState, max_nonfinite_steps: int) -> None:
    """Count a step skipped for a non-finite gradient; too many in a row stop the run."""
    state.skipped_steps += 1
    state.nonfinite_in_a_row += 1
    logger.warning(
        "Skipped optimizer step %d: non-finite gradient norm (%d skipped in total).",
        state.global_step + 1,
        state.skipped_steps,
    )
    if state.nonfinite_in_a_row >= max_nonfinite_steps:
        raise NonFiniteLossError(
            f"Stopping: the loss or gradients were not finite (NaN or inf) in {state.nonfinite_in_a_row} "
            f"optimizer steps in a row (--max_nonfinite_steps {max_nonfinite_steps}), at step "
            f"{state.global_step + 1}. Lower --learning_rate, set --max_grad_norm, or check the data; "
            "resume from the last checkpoint with --resume_from_checkpoint latest."
        )


def _check_fsdp(accelerator: Accelerator, ema: EMAModel | None, on_step_end: Callable | None) -> Callable | None:
    """Refuse an EMA under FSDP (it would only average each process's shard) and drop the validation callback (sampling
    on the main process alone would wait forever for the other shards); `on_step_end`, or `None` under FSDP."""
    if accelerator.distributed_type != DistributedType.FSDP:
        return on_step_end
    if ema is not None:
        raise ValueError("--use_ema is not supported with FSDP (the average would only cover each process's shard).")
    if on_step_end is not None:
        logger.warning("Validation images are not made under FSDP.")
    return None


def _whole_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The trained model, unwrapped; under FSDP its shards gathered (every process takes part) into a whole model on
    the main process."""
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.distributed_type != DistributedType.FSDP:
        return unwrapped
    state_dict = accelerator.get_state_dict(model)
    if not accelerator.is_main_process:
        return unwrapped
    whole = type(unwrapped)(unwrapped.config)
    whole.load_state_dict(state_dict)
    return whole


def train(
    config: TrainingConfig,
    accelerator: Accelerator,
    model: torch.nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    loss_fn: Callable[[torch.nn.Module, dict, int], dict[str, torch.Tensor]],
    ema: EMAModel | None = None,
    on_step_end: Callable[[int, torch.nn.Module], dict[str, float] | None] | None = None,
    before_optimizer_step: Callable[[torch.nn.Module], object] | None = None,
) -> tuple[torch.nn.Module, TrainingState, dict[str, float]]:
    """
    Train `model` for `config.max_train_steps` optimizer steps and return `(unwrapped model, state, last metrics)`.

    Args:
        loss_fn: `loss_fn(model, batch, step) -> {"loss": scalar, **metrics}`; the metrics (scalar tensors) are
            averaged over the logging interval. `step` is the optimizer step about to be taken.
        ema: the moving average to update after every optimizer step (and to checkpoint).
        on_step_end: called on every process after each optimizer step with `(step, unwrapped model)` (validation
            images, ...); metrics it returns (a dict of floats) are logged at that step.
        before_optimizer_step: called with the unwrapped model once the gradients of a step are complete (all-reduced),
            before clipping and the optimizer step (e.g. the transformer's per-resblock gradient unscaling).

    A step whose gradient norm is not finite (a NaN or inf loss anywhere) is skipped, counted and logged (its batches'
    metrics are left out of the averages); after
    `--max_nonfinite_steps` such steps in a row, `NonFiniteLossError` stops the run. Checking the norm costs one
    host sync per optimizer step, and every process sees the same all-reduced norm, so all of them skip together.
    """
    # 1. What FSDP cannot do.
    on_step_end = _check_fsdp(accelerator, ema, on_step_end)

    # 2. Optimizer, schedule, distribution.
    optimizer = create_optimizer(config, model)
    lr_scheduler = create_lr_scheduler(config, optimizer, accelerator.num_processes)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    if config.powersgd_rank is not None:
        register_powersgd_hook(accelerator, model, config.powersgd_rank, config.powersgd_start_step)
    if ema is not None:
        ema.to(accelerator.device)

    # 3. The run folder, and where a resumed run stands.
    run = RunFolder(config.output_dir)
    if accelerator.is_main_process:
        accelerator.init_trackers(run.path.name, config=config.hyperparameters)
        run.remove_stale_temporaries()  # of a final save or a checkpoint killed in a past run
    state = TrainingState()  # saved with the EMA by save_checkpoint, as JSON and safetensors (not pickles)
    metrics = MetricsLogger(accelerator, run.metrics_file)
    _resume(config, accelerator, state, ema, metrics, train_dataloader)

    # 4. A batch at a time; an optimizer step once `gradient_accumulation_steps` batches are accumulated.
    max_grad_norm = config.max_grad_norm if config.max_grad_norm is not None else math.inf
    unwrapped = accelerator.unwrap_model(model)
    step_metrics = []  # of the batches of the current optimizer step; logged only if the step is taken
    batches = _epochs(accelerator, train_dataloader, state, config.train_batch_size)
    # Steps, steps/s, time left and the last step's loss, on the local main process (Accelerate's convention).
    progress_bar = tqdm(
        total=config.max_train_steps,
        initial=state.global_step,
        desc="Training",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    model.train()
    while state.global_step < config.max_train_steps:
        batch = next(batches)  # before `accumulate`, which syncs the gradients early at the data loader's last batch
        with accelerator.accumulate(model):
            outputs = loss_fn(model, batch, state.global_step)
            accelerator.backward(outputs["loss"])
            step_metrics.append({name: torch.as_tensor(value).detach() for name, value in outputs.items()})
            if accelerator.sync_gradients:
                if before_optimizer_step is not None:
                    before_optimizer_step(unwrapped)
                grad_norm, stepped = _optimizer_step(accelerator, model, optimizer, lr_scheduler, max_grad_norm)
        if not accelerator.sync_gradients:
            continue
        taken_metrics, step_metrics = step_metrics, []
        if not stepped:
            _count_skipped_step(state, config.max_nonfinite_steps)
            continue

        # 5. After each optimizer step: metrics, EMA, logs, checkpoint, validation.
        state.nonfinite_in_a_row = 0
        state.global_step += 1
        for batch_metrics in taken_metrics:
            metrics.add(batch_metrics)
        metrics.add({"grad_norm": grad_norm})
        if ema is not None:
            ema.step(model.parameters())
        progress_bar.update()
        if not progress_bar.disable:
            progress_bar.set_postfix(loss=f"{taken_metrics[-1]['loss'].item():.4g}", refresh=False)
        # The first step too: a long interval would otherwise say nothing for minutes.
        if state.global_step in (1, config.max_train_steps) or state.global_step % config.logging_steps == 0:
            metrics.log(state.global_step, {"lr": lr_scheduler.get_last_lr()[0], "skipped_steps": state.skipped_steps})
        if state.global_step % config.checkpointing_steps == 0:
            save_checkpoint(accelerator, run.path, state, ema, config.checkpoints_total_limit)
        if on_step_end is not None:
            validation = on_step_end(state.global_step, unwrapped)
            if validation:
                metrics.log_validation(state.global_step, validation)

    # 6. The trained model.
    progress_bar.close()
    accelerator.wait_for_everyone()
    model = _whole_model(accelerator, model)
    accelerator.end_training()
    return model, state, metrics.last


__all__ = [
    "MetricsLogger",
    "NonFiniteLossError",
    "create_accelerator",
    "create_optimizer",
    "create_lr_scheduler",
    "register_powersgd_hook",
    "train",
]

"""The training library and the training scripts: schedules, exact resume, atomic checkpoints, the non-finite guard,
EMA outputs, mixed precision, errors. Tiny models, a few steps each."""

import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_utils import (  # noqa: F401 (training_environment: autouse fixture)
    REPO_ROOT,
    Interrupt,
    assert_same_weights,
    interrupt_on_call,
    load_script,
    training_environment,
    training_logs,
)

from hf_dalle import DalleVAE, DalleVAEConfig
from hf_dalle.data import make_shapes_dataset, render_caption
from hf_dalle.training import NonFiniteLossError, RunFolder, annealed_value, list_checkpoints, resolve_checkpoint
from hf_dalle.training.validation import shapes_judge_accuracy


TINY_VAE = '{"hidden_size": 8, "vocab_size": 16, "num_blocks_per_group": 1, "decoder_init_size": 8}'


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    """20 shapes-world images of 32x32 with captions, saved with `save_to_disk`."""
    path = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes_dataset(20, seed=1, image_size=32).save_to_disk(str(path))
    return path


def vae_args(data: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset_name",
        str(data),
        "--resolution",
        "32",
        "--model_config",
        TINY_VAE,
        "--output_dir",
        str(output_dir),
        "--train_batch_size",
        "4",
        "--learning_rate",
        "3e-3",
        "--temperature_steps",
        "8",
        "--kl_weight_steps",
        "4",
        "--logging_steps",
        "2",
        "--validation_steps",
        "100",
        "--num_validation_images",
        "2",
        *extra,
    ]


def test_annealed_value_end_points_and_shapes():
    # The paper's relaxation schedules: temperature 1 -> 1/16 and KL weight 0 -> 6.6, cosine.
    assert annealed_value(0, 1.0, 1 / 16, 100) == 1.0
    assert annealed_value(100, 1.0, 1 / 16, 100) == 1 / 16
    assert annealed_value(10**6, 0.0, 6.6, 100) == 6.6  # stays at the end value
    assert annealed_value(50, 0.0, 6.6, 100) == pytest.approx(3.3)  # cosine and linear meet half way
    assert annealed_value(25, 0.0, 1.0, 100) == pytest.approx(0.5 * (1 - math.cos(math.pi / 4)))
    assert annealed_value(25, 0.0, 1.0, 100, "linear") == pytest.approx(0.25)
    assert annealed_value(50, 1.0, 1 / 16, 100, "exponential") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="Unknown schedule 'step'"):
        annealed_value(1, 1.0, 0.0, 10, "step")
    with pytest.raises(ValueError, match="positive end points"):
        annealed_value(1, 1.0, 0.0, 10, "exponential")


def test_vae_resume_is_exact(shapes_dir, tmp_path, monkeypatch):
    """8 steps straight == 3 steps, killed, resumed from the checkpoint for 5 more: same weights, EMA and metrics.
    20 images in batches of 4: the checkpoint lies mid-epoch (the data loader must skip the consumed batches) and the
    run crosses an epoch boundary; gumbel noise comes from the restored RNG state."""
    train_vae = load_script("train_vae")
    common = ["--max_train_steps", "8", "--checkpointing_steps", "3", "--use_ema", "--ema_decay", "0.5"]
    train_vae.main(vae_args(shapes_dir, tmp_path / "straight", *common))

    resumed = tmp_path / "resumed"
    interrupt_on_call(monkeypatch, DalleVAE, "forward", 5)  # killed during step 5, after checkpoint-3
    with pytest.raises(Interrupt):
        train_vae.main(vae_args(shapes_dir, resumed, *common))
    monkeypatch.undo()
    assert [p.name for p in list_checkpoints(resumed)] == ["checkpoint-3"]
    with open(resumed / "logs" / "metrics.jsonl", "a") as log:
        log.write('{"step": 5, "lo')  # killed while writing a line
    state = train_vae.main(vae_args(shapes_dir, resumed, *common, "--resume_from_checkpoint", "latest"))
    assert state.global_step == 8 and state.epoch == 1 and state.batches_in_epoch == 3

    straight = tmp_path / "straight"
    assert_same_weights(straight, resumed)  # the EMA weights (what from_pretrained loads)
    assert_same_weights(straight, resumed, "model.non_ema.safetensors")  # the raw weights
    ema, raw = load_file(straight / "model.safetensors"), load_file(straight / "model.non_ema.safetensors")
    assert any(not torch.equal(ema[name], raw[name]) for name in ema)  # the average is not the raw weights
    straight_logs, resumed_logs = training_logs(straight), training_logs(resumed)
    assert [log["step"] for log in straight_logs] == [1, 2, 4, 6, 8]  # the first step, then every 2
    assert [log["step"] for log in resumed_logs] == [1, 2, 4, 6, 8]  # step 4 (logged before the kill) not twice
    for a, b in zip(straight_logs[-2:], resumed_logs[-2:]):  # steps 6 and 8, both after the resume point
        assert a["step"] == b["step"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_resume_from_a_checkpoint_at_the_end_of_an_epoch(shapes_dir, tmp_path, monkeypatch):
    """20 images in batches of 4 are 5 batches: checkpoint-5 is the epoch's last batch; resuming starts epoch 1."""
    train_vae = load_script("train_vae")
    common = ["--max_train_steps", "7", "--checkpointing_steps", "5"]
    train_vae.main(vae_args(shapes_dir, tmp_path / "straight", *common))
    resumed = tmp_path / "resumed"
    interrupt_on_call(monkeypatch, DalleVAE, "forward", 6)  # killed during step 6, after checkpoint-5
    with pytest.raises(Interrupt):
        train_vae.main(vae_args(shapes_dir, resumed, *common))
    monkeypatch.undo()
    state = train_vae.main(vae_args(shapes_dir, resumed, *common, "--resume_from_checkpoint", "latest"))
    assert state.global_step == 7 and state.epoch == 1 and state.batches_in_epoch == 2
    assert_same_weights(tmp_path / "straight", resumed)


def test_checkpoint_interrupted_while_saving_leaves_the_previous_one(shapes_dir, tmp_path, monkeypatch):
    train_vae = load_script("train_vae")
    output_dir = tmp_path / "run"
    args = vae_args(shapes_dir, output_dir, "--max_train_steps", "4", "--checkpointing_steps", "2")
    # The second save (step 4) dies after the model weights are written, while the optimizer state is written.
    from accelerate import checkpointing as accelerate_checkpointing

    original_save = accelerate_checkpointing.save
    torn = RunFolder(output_dir).checkpoint_temporary(4)

    def save_killed_at_step_4(obj, path, *args, **kwargs):
        if Path(path).parent == torn and Path(path).name == "optimizer.bin":
            Path(path).write_bytes(b"half an optimizer")
            raise Interrupt("killed while saving checkpoint-4")
        return original_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(accelerate_checkpointing, "save", save_killed_at_step_4)
    with pytest.raises(Interrupt):
        train_vae.main(args)
    monkeypatch.undo()
    folder = output_dir / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == [torn.name, "checkpoint-2"]  # the torn save is hidden
    assert torn.name.startswith(".")
    assert resolve_checkpoint(output_dir, "latest") == folder / "checkpoint-2"
    assert not (output_dir / "model.safetensors").exists()  # no final model from a failed run

    # Resuming ignores (and clears) the torn save and completes the run like an uninterrupted one.
    train_vae.main([*args, "--resume_from_checkpoint", "latest"])
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    train_vae.main(vae_args(shapes_dir, tmp_path / "straight", "--max_train_steps", "4", "--checkpointing_steps", "2"))
    assert_same_weights(tmp_path / "straight", output_dir)


def test_checkpoints_total_limit_prunes_the_oldest(shapes_dir, tmp_path):
    train_vae = load_script("train_vae")
    output_dir = tmp_path / "run"
    train_vae.main(
        vae_args(
            shapes_dir,
            output_dir,
            "--max_train_steps",
            "5",
            "--checkpointing_steps",
            "1",
            "--checkpoints_total_limit",
            "2",
        )
    )
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-4", "checkpoint-5"]
    # The newest checkpoint holds the final weights (no EMA here: model.safetensors is the raw model).
    final = load_file(output_dir / "model.safetensors")
    checkpoint = load_file(output_dir / "checkpoints" / "checkpoint-5" / "model.safetensors")
    assert all(torch.equal(final[name], checkpoint[name]) for name in final)
    with pytest.raises(ValueError, match="checkpoint-3. is not a complete checkpoint: there is no such folder"):
        resolve_checkpoint(output_dir, str(output_dir / "checkpoints" / "checkpoint-3"))


def test_nonfinite_loss_steps_are_skipped_then_training_stops(shapes_dir, tmp_path, monkeypatch):
    train_vae = load_script("train_vae")
    original, calls = DalleVAE.forward, []

    def forward_with_nan_losses(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        calls.append(self.encoder.blocks.input.weight.detach().clone())  # the weights this step starts from
        if len(calls) in (2, 3) or len(calls) >= 6:  # steps 2 and 3 once, then every step from 6 on
            output.loss = output.loss * float("nan")
        return output

    monkeypatch.setattr(DalleVAE, "forward", forward_with_nan_losses)
    with pytest.raises(
        NonFiniteLossError,
        match=r"not finite \(NaN or inf\) in 3 optimizer steps in a row \(--max_nonfinite_steps 3\)",
    ):
        train_vae.main(vae_args(shapes_dir, tmp_path / "run", "--max_train_steps", "20", "--max_nonfinite_steps", "3"))
    assert len(calls) == 8  # 5 forward passes, 2 of them skipped (3 steps taken), then 3 non-finite in a row
    assert torch.equal(calls[1], calls[2]) and torch.equal(calls[2], calls[3])  # skipped: no update, no NaN
    assert not torch.equal(calls[0], calls[1]) and not torch.equal(calls[3], calls[4])  # finite steps update
    assert all(torch.isfinite(weights).all() for weights in calls)
    logs = training_logs(tmp_path / "run")
    assert [(log["step"], log["skipped_steps"]) for log in logs] == [(1, 0), (2, 2)]
    assert math.isfinite(logs[1]["loss"])  # the averages leave the skipped batches out


def test_processes_that_accelerate_does_not_connect_are_refused(shapes_dir, tmp_path, monkeypatch):
    # `torchrun --nproc_per_node 2` on CPU without ACCELERATE_USE_CPU=1: each process would train alone.
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        RuntimeError, match="Launched as 2 processes, but Accelerate runs this one as a single process"
    ):
        load_script("train_vae").main(vae_args(shapes_dir, tmp_path / "run", "--max_train_steps", "1"))


def test_streaming_resume_is_exact(shapes_dir, tmp_path, monkeypatch):
    """--streaming reads the data as an IterableDataset (shuffle buffer reseeded per epoch): 6 steps straight equal 2
    steps, killed, resumed for 4."""
    train_vae = load_script("train_vae")
    common = ["--streaming", "--max_train_steps", "6", "--checkpointing_steps", "2"]
    train_vae.main(vae_args(shapes_dir, tmp_path / "straight", *common))
    interrupt_on_call(monkeypatch, DalleVAE, "forward", 4)
    with pytest.raises(Interrupt):
        train_vae.main(vae_args(shapes_dir, tmp_path / "resumed", *common))
    monkeypatch.undo()
    train_vae.main(vae_args(shapes_dir, tmp_path / "resumed", *common, "--resume_from_checkpoint", "latest"))
    assert_same_weights(tmp_path / "straight", tmp_path / "resumed")


def _checkpointed_run(shapes_dir, output_dir, steps: int = 4, *extra: str) -> list[str]:
    """Train the tiny dVAE for `steps` steps with a checkpoint every 2; returns its arguments."""
    args = vae_args(shapes_dir, output_dir, "--max_train_steps", str(steps), "--checkpointing_steps", "2", *extra)
    load_script("train_vae").main(args)
    return args


def test_resume_without_random_states_is_refused_unless_allowed(shapes_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = _checkpointed_run(shapes_dir, output_dir, 2)
    (output_dir / "checkpoints" / "checkpoint-2" / "random_states_0.pkl").unlink()
    more = [arg if arg != "2" or i != args.index("--max_train_steps") + 1 else "3" for i, arg in enumerate(args)]
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    with pytest.raises(ValueError, match=r"checkpoint-2' is not a complete checkpoint: files are missing: "):
        load_script("train_vae").main([*more, "--resume_from_checkpoint", str(checkpoint)])
    with pytest.raises(ValueError, match="random_states_0.pkl.*--allow_inexact_resume"):
        load_script("train_vae").main([*more, "--resume_from_checkpoint", str(checkpoint)])
    state = load_script("train_vae").main(
        [*more, "--resume_from_checkpoint", str(checkpoint), "--allow_inexact_resume"]
    )
    assert state.global_step == 3  # resumed at 2, one more step


@pytest.mark.parametrize("victim", ["custom_checkpoint_0.pkl", "training_state.json", "optimizer.bin"])
def test_a_crafted_checkpoint_runs_no_code(shapes_dir, tmp_path, victim):
    """A checkpoint is data: a pickle payload in a state file (or Accelerate's pickled custom states, which older
    versions wrote) is refused, never executed."""
    output_dir = tmp_path / "run"
    args = _checkpointed_run(shapes_dir, output_dir, 2, "--use_ema")
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    pwned = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return exec, (f"open({str(pwned)!r}, 'w').write('ran')",)

    torch.save(Payload(), checkpoint / victim)
    if victim != "custom_checkpoint_0.pkl":  # the marker rewritten to match: the loader itself must refuse
        reseal(checkpoint)
    refusals = {
        "custom_checkpoint_0.pkl": r"pickled states \['custom_checkpoint_0.pkl'\]",
        "training_state.json": r"training_state.json is not a saved TrainingState",
        "optimizer.bin": r"optimizer.bin holds objects other than tensors and plain data, and is not loaded for safety",
    }
    with pytest.raises(ValueError, match=refusals[victim]) as refusal:
        load_script("train_vae").main([*args, "--resume_from_checkpoint", str(checkpoint)])
    assert "weights_only" not in str(refusal.value)  # torch's advice to load it unsafely never reaches the user
    assert not pwned.exists()


def reseal(checkpoint: Path) -> None:
    """Rewrite the completion marker to match the files as they are now (what a crafted checkpoint comes with)."""
    from hf_dalle.hub_utils import sha256_of

    files = [p for p in sorted(checkpoint.iterdir()) if p.is_file() and p.name != "checkpoint_complete.json"]
    marker = json.loads((checkpoint / "checkpoint_complete.json").read_text())
    marker["files"] = {p.name: p.stat().st_size for p in files}
    marker["sha256"] = {p.name: sha256_of(p) for p in files}
    (checkpoint / "checkpoint_complete.json").write_text(json.dumps(marker))


def test_a_damaged_random_state_of_the_same_size_is_refused_unless_allowed(shapes_dir, tmp_path, caplog):
    """Bytes of random_states_0.pkl overwritten, its size kept (Accelerate would catch the load error and log it at
    info level): the checksum in the marker refuses it, and --allow_inexact_resume resumes with a warning."""
    output_dir = tmp_path / "run"
    args = _checkpointed_run(shapes_dir, output_dir, 2)
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    damaged = checkpoint / "random_states_0.pkl"
    data = bytearray(damaged.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)
    damaged.write_bytes(bytes(data))
    more = [*args[:-4], "--max_train_steps", "3", *args[-2:]]
    assert more.count("--max_train_steps") == 1, more
    with pytest.raises(
        ValueError,
        match=r"of the wrong size or SHA-256 \(damaged since they were saved\): \['random_states_0.pkl'\].*--allow_inexact_resume",
    ):
        load_script("train_vae").main([*more, "--resume_from_checkpoint", str(checkpoint)])
    with caplog.at_level(logging.WARNING, logger="hf_dalle.training.checkpointing"):
        state = load_script("train_vae").main(
            [*more, "--resume_from_checkpoint", str(checkpoint), "--allow_inexact_resume"]
        )
    assert state.global_step == 3
    assert "with a damaged random_states_0.pkl: not exact" in caplog.text


@pytest.mark.parametrize(
    "field, value, refusal",
    [
        ("global_step", -5, r"global_step=-5 \(counts are never negative\)"),
        (
            "global_step",
            10**12,
            r"training_state.json says step 1000000000000, but its checkpoint_complete.json says step 2",
        ),
        ("batches_in_epoch", 10**9, r"at batch 1000000000 of its epoch, but the data has 5 batches per epoch"),
    ],
)
def test_a_crafted_training_state_is_refused(shapes_dir, tmp_path, field, value, refusal):
    output_dir = tmp_path / "run"
    args = _checkpointed_run(shapes_dir, output_dir, 2)
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    saved = json.loads((checkpoint / "training_state.json").read_text())
    (checkpoint / "training_state.json").write_text(json.dumps({**saved, field: value}))
    reseal(checkpoint)
    with pytest.raises(ValueError, match=refusal):
        load_script("train_vae").main([*args, "--resume_from_checkpoint", str(checkpoint)])


def test_a_checkpoint_with_non_finite_weights_is_refused(shapes_dir, tmp_path):
    """A NaN in the saved moving average (or the model, or the optimizer state): refused, never trained on."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    output_dir = tmp_path / "run"
    args = _checkpointed_run(shapes_dir, output_dir, 2, "--use_ema")
    checkpoint = output_dir / "checkpoints" / "checkpoint-2"
    ema_file = checkpoint / "ema.safetensors"
    with safe_open(ema_file, "pt") as file:
        metadata = file.metadata()
    tensors = load_file(ema_file)
    tensors["shadow_params.0"][0] = float("nan")
    save_file(tensors, ema_file, metadata=metadata)
    reseal(checkpoint)
    with pytest.raises(ValueError, match=r"ema.safetensors holds NaN or infinite values in 'shadow_params.0'"):
        load_script("train_vae").main([*args, "--resume_from_checkpoint", str(checkpoint)])


def test_resume_from_a_folder_that_is_no_checkpoint_names_it(shapes_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = vae_args(shapes_dir, output_dir, "--max_train_steps", "1")
    empty = output_dir / "checkpoints" / "checkpoint-7"
    empty.mkdir(parents=True)
    for folder in (tmp_path, empty):
        with pytest.raises(
            ValueError,
            match=rf"--resume_from_checkpoint '{folder}' is not a complete checkpoint: it has no checkpoint_complete.json",
        ):
            load_script("train_vae").main([*args, "--resume_from_checkpoint", str(folder)])
    assert not (output_dir / "model.safetensors").exists()


def test_latest_passes_over_a_damaged_checkpoint(shapes_dir, tmp_path, caplog):
    """checkpoint-4's optimizer state is truncated (a disk error, a partial copy): 'latest' resumes from
    checkpoint-2 and the run ends as an uninterrupted one."""
    caplog.set_level(logging.INFO, logger="hf_dalle.training.loop")
    output_dir = tmp_path / "run"
    _checkpointed_run(shapes_dir, output_dir, 4)
    damaged = output_dir / "checkpoints" / "checkpoint-4" / "optimizer.bin"
    damaged.write_bytes(damaged.read_bytes()[:100])
    state = load_script("train_vae").main(
        vae_args(
            shapes_dir,
            output_dir,
            "--max_train_steps",
            "6",
            "--checkpointing_steps",
            "2",
            "--resume_from_checkpoint",
            "latest",
        )
    )
    assert state.global_step == 6
    assert (
        "Passing over the damaged checkpoint" in caplog.text
        and "of the wrong size or SHA-256 (damaged since they were saved): ['optimizer.bin']" in caplog.text
    )
    assert "Resumed from " + str(output_dir / "checkpoints" / "checkpoint-2") in caplog.text
    _checkpointed_run(shapes_dir, tmp_path / "straight", 6)
    assert_same_weights(tmp_path / "straight", output_dir)
    assert [log["step"] for log in training_logs(output_dir)] == [1, 2, 4, 6]


def test_a_kill_during_the_final_save_leaves_no_temporary_folder(shapes_dir, tmp_path):
    """SIGKILL while the final model is written: the next run removes the torn temporary folder (`io_utils`) and
    writes the model."""
    from hf_dalle.io_utils import TEMPORARY_PREFIX

    output_dir = tmp_path / "run"
    args = vae_args(shapes_dir, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "2")
    killer = f"""
import os, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from training_utils import load_script
from hf_dalle import DalleVAE
original = DalleVAE.save_pretrained
def save_and_die(self, folder, *args, **kwargs):
    original(self, folder, *args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
DalleVAE.save_pretrained = save_and_die
load_script("train_vae").main({args!r})
"""
    result = subprocess.run([sys.executable, "-c", killer], capture_output=True, timeout=600)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    assert [p.name.startswith(TEMPORARY_PREFIX) for p in output_dir.iterdir()].count(True) == 1
    assert not (output_dir / "model.safetensors").exists()
    load_script("train_vae").main([*args, "--resume_from_checkpoint", "latest"])
    assert not list(output_dir.glob(f"{TEMPORARY_PREFIX}*"))
    assert (output_dir / "model.safetensors").is_file()


@pytest.fixture
def imagefolder_with_a_corrupt_image(tmp_path) -> Path:
    """12 shapes images as an imagefolder; image 5 is a truncated PNG (a download cut short)."""
    folder = tmp_path / "images"
    folder.mkdir()
    with open(folder / "metadata.jsonl", "w") as metadata:
        for index, row in enumerate(make_shapes_dataset(12, seed=3, image_size=32)):
            row["image"].save(folder / f"{index}.png")
            metadata.write(json.dumps({"file_name": f"{index}.png", "caption": row["caption"]}) + "\n")
    corrupt = folder / "5.png"
    corrupt.write_bytes(corrupt.read_bytes()[:60])
    return folder


def imagefolder_args(folder: Path, output_dir: Path, *extra: str) -> list[str]:
    args = vae_args(folder, output_dir, "--max_train_steps", "4", *extra)
    args[args.index("--dataset_name")] = "--train_data_dir"
    return args


@pytest.mark.parametrize("streaming", [False, True])
def test_a_corrupt_image_stops_the_run_before_training_by_default(
    imagefolder_with_a_corrupt_image, tmp_path, streaming
):
    output_dir = tmp_path / "run"
    extra = ["--streaming"] if streaming else []
    with pytest.raises(ValueError, match=r"Row 5 \(.*5.png\): the image does not decode .*--bad_images skip"):
        load_script("train_vae").main(imagefolder_args(imagefolder_with_a_corrupt_image, output_dir, *extra))
    if not streaming:  # checked up front: not a single step was taken
        assert not (output_dir / "checkpoints").exists() and not (output_dir / "logs").exists()
    assert not (output_dir / "model.safetensors").exists()


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_images_skip_trains_on_the_others(imagefolder_with_a_corrupt_image, tmp_path, caplog, streaming):
    output_dir = tmp_path / "run"
    extra = ["--bad_images", "skip"] + (["--streaming"] if streaming else [])
    with caplog.at_level(logging.WARNING, logger="hf_dalle.training.data"):
        state = load_script("train_vae").main(imagefolder_args(imagefolder_with_a_corrupt_image, output_dir, *extra))
    assert state.global_step == 4 and (output_dir / "model.safetensors").is_file()
    assert "Skipping Row 5 (" in caplog.text and "5.png): the image does not decode" in caplog.text
    # 11 good images in batches of 4 are 2 batches an epoch: step 4 is epoch 1's second (with 12 images, its first)
    assert (state.epoch, state.batches_in_epoch) == (1, 2)


def test_shapes_judge_accuracy():
    images = [
        render_caption(caption, seed=i)
        for i, caption in enumerate(["a red circle", "a blue square above a green triangle"])
    ]
    assert shapes_judge_accuracy(images, ["a red circle", "a blue square above a green triangle"]) == 1.0
    assert shapes_judge_accuracy(images, ["a red square", "a blue square above a green triangle"]) == 0.5
    assert shapes_judge_accuracy(images, ["a green circle", "a blue square below a green triangle"]) == 0.0
    with pytest.raises(ValueError, match="does not fit the shapes grammar"):
        shapes_judge_accuracy(images, ["a red circle", "a cat"])
    with pytest.raises(ValueError, match="one caption per image"):
        shapes_judge_accuracy(images, ["a red circle"])


def test_averaged_weights_swaps_the_average_in_and_back_out():
    from hf_dalle.training import averaged_weights, create_ema

    model = DalleVAE(DalleVAEConfig(**json.loads(TINY_VAE)))
    ema = create_ema(model, decay=0.5)
    ema.step(model.parameters())  # the first step copies the weights
    raw = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.step(model.parameters())  # the average now lies between the old and the new weights
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    with averaged_weights(ema, model) as averaged:
        assert averaged is model
        for (name, p), average in zip(model.named_parameters(), ema.shadow_params):
            assert torch.equal(p, average) and not torch.equal(p, trained[name]) and not torch.equal(p, raw[name])
    for name, p in model.named_parameters():
        assert torch.equal(p, trained[name])
    with pytest.raises(Interrupt), averaged_weights(ema, model):
        raise Interrupt()  # a failed validation or save still puts the trained weights back
    assert all(torch.equal(p, trained[name]) for name, p in model.named_parameters())
    with averaged_weights(None, model):  # no EMA: the model as it is
        assert all(torch.equal(p, trained[name]) for name, p in model.named_parameters())


def test_training_config_from_the_flags():
    import argparse

    from hf_dalle.training import TrainingConfig, add_common_arguments

    parser = add_common_arguments(argparse.ArgumentParser(), learning_rate=1e-3, train_batch_size=8, max_train_steps=5)
    parser.add_argument("--caption_dropout", type=float, default=0.1)  # a script's own flag
    args = parser.parse_args(["--output_dir", "out", "--max_grad_norm", "2", "--resume_from_checkpoint", "latest"])
    config = TrainingConfig.from_args(args)
    assert (config.output_dir, config.learning_rate, config.train_batch_size, config.max_train_steps) == (
        "out",
        1e-3,
        8,
        5,
    )
    assert (config.max_grad_norm, config.resume_from_checkpoint, config.allow_inexact_resume) == (2.0, "latest", False)
    # Every flag of the run goes to the trackers, the script's own too; None values (unset options) do not.
    assert config.hyperparameters["caption_dropout"] == 0.1 and config.hyperparameters["output_dir"] == "out"
    assert "powersgd_rank" not in config.hyperparameters
    assert not hasattr(config, "use_ema")  # the EMA is the script's: it creates one and hands it to train()


def test_a_run_folder_left_by_older_scripts_resumes(shapes_dir, tmp_path):
    """Checkpoints keep their layout; the temporary folders older versions named differently (`.tmp-checkpoint-N`,
    `.tmp-old-checkpoint-N`, `.tmp-save-PID-*`) are stale to this one and removed when the run resumes."""
    output_dir = tmp_path / "run"
    args = _checkpointed_run(shapes_dir, output_dir, 2)
    left = [output_dir / "checkpoints" / ".tmp-checkpoint-4", output_dir / "checkpoints" / ".tmp-old-checkpoint-2"]
    left.append(output_dir / ".tmp-save-999999999-x")
    for folder in left:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"torn")
    more = [arg if arg != "2" or i != args.index("--max_train_steps") + 1 else "4" for i, arg in enumerate(args)]
    state = load_script("train_vae").main([*more, "--resume_from_checkpoint", "latest"])
    assert state.global_step == 4
    assert not any(folder.exists() for folder in left)
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-2", "checkpoint-4"]
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4"]


def run_script(name: str, args: list[str]) -> subprocess.CompletedProcess:
    """`python scripts/{name}.py ARGS` as a user runs it, single-threaded on this shared machine."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO_ROOT / "scripts" / f"{name}.py"), *args]
    result = subprocess.run(command, capture_output=True, timeout=600, env=env)
    # Decoded here: text=True would turn tqdm's carriage returns into line breaks.
    result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
    return result


def test_training_shows_progress_and_logs_the_first_step(shapes_dir, tmp_path):
    """A short run says at once how it goes: a tqdm bar (steps, rate, time left, loss) and the first step's metrics,
    though --logging_steps is longer than the run."""
    output_dir = tmp_path / "run"
    args = vae_args(shapes_dir, output_dir, "--max_train_steps", "3", "--checkpointing_steps", "100")
    args[args.index("--logging_steps") + 1] = "100"
    result = run_script("train_vae", args)
    assert result.returncode == 0, result.stderr
    bar = [line for line in result.stderr.split("\r") if line.startswith("Training: ")]  # tqdm's refreshes
    assert bar[0].startswith("Training:   0%") and "0/3 [" in bar[0]
    assert bar[-1].startswith("Training: 100%") and "3/3 [" in bar[-1] and "loss=" in bar[-1]
    assert "step/s" in bar[-1] or "s/step" in bar[-1]
    assert "step 1: " in result.stderr  # the first step's log line
    assert [log["step"] for log in training_logs(output_dir)] == [1, 3]


def test_a_used_output_folder_is_refused_unless_resumed_or_overwritten(shapes_dir, tmp_path):
    output_dir = tmp_path / "run"
    load_script("train_vae").main(
        vae_args(shapes_dir, output_dir, "--max_train_steps", "2", "--checkpointing_steps", "1")
    )
    again = vae_args(shapes_dir, output_dir, "--max_train_steps", "1", "--checkpointing_steps", "1")
    refused = run_script("train_vae", again)
    assert refused.returncode != 0
    assert f"--output_dir '{output_dir}' is not empty. Pass --resume_from_checkpoint latest" in refused.stderr
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-1", "checkpoint-2"]  # untouched

    overwritten = run_script("train_vae", [*again, "--overwrite_output_dir"])
    assert overwritten.returncode == 0, overwritten.stderr
    # Only the new run's checkpoints and metrics: `latest` would resume this run, not the old one.
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-1"]
    assert [log["step"] for log in training_logs(output_dir)] == [1]
    assert not [p for p in tmp_path.iterdir() if p.name != "run"]  # the old run's temporary is gone too


def test_overwrite_deletes_only_a_run_folder(shapes_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    args = vae_args(shapes_dir, tmp_path, "--max_train_steps", "1", "--overwrite_output_dir")
    with pytest.raises(ValueError, match="--overwrite_output_dir deletes only a training run's folder"):
        load_script("train_vae").parse_args(args)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="either --resume_from_checkpoint or --overwrite_output_dir"):
        load_script("train_vae").parse_args([*args, "--resume_from_checkpoint", "latest"])


def test_a_batch_larger_than_the_data_is_refused_before_anything_is_built(shapes_dir, tmp_path, monkeypatch):
    """train_clip.py's default batch (64) on 20 images: refused at once, not after building the models."""
    result = run_script("train_clip", ["--dataset_name", str(shapes_dir), "--output_dir", str(tmp_path / "clip")])
    assert result.returncode != 0
    message = "--train_batch_size 64 needs at least 64 training examples, but the data has 20"
    assert message in result.stderr
    train_vae = load_script("train_vae")
    monkeypatch.setattr(train_vae, "build_vae", lambda args: pytest.fail("built before the data was checked"))
    args = vae_args(shapes_dir, tmp_path / "vae", "--max_train_steps", "1")
    args[args.index("--train_batch_size") + 1] = "32"
    with pytest.raises(ValueError, match="--train_batch_size 32 needs at least 32 training examples"):
        train_vae.main(args)

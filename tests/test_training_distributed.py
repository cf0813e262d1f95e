"""Data-parallel training on CPU (2 processes, gloo) through `accelerate launch`, PowerSGD gradient compression, and
bf16 mixed precision."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from training_utils import REPO_ROOT, load_script, training_environment  # noqa: F401 (autouse fixture)

from hf_dalle import DalleTokenizer
from hf_dalle.data import all_captions, make_shapes_dataset


TINY_VAE = '{"hidden_size": 8, "vocab_size": 16, "num_blocks_per_group": 1, "decoder_init_size": 8}'
TINY_DALLE = '{"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}'


def run(command: list[str], **env) -> str:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env}
    result = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(script: str, args: list[str], num_processes: int) -> str:
    """`accelerate launch` with the repository's DDP config on CPU (gloo), through tests/distributed_training.py, which
    dumps every rank's weights."""
    options = "--config_file configs/accelerate/ddp.yaml --mixed_precision no --num_processes".split()
    command = [sys.executable, "-m", "accelerate.commands.launch", *options, str(num_processes)]
    command += [
        "--main_process_port",
        str(free_port()),
        "tests/distributed_training.py",
        f"scripts/{script}.py",
        *args,
    ]
    return run(command, ACCELERATE_USE_CPU="1")


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> Path:
    """32 pre-tokenized shapes pairs (tiny dVAE, 4x4 codes), made by the scripts."""
    root = tmp_path_factory.mktemp("distributed")
    make_shapes_dataset(32, seed=3, image_size=32).save_to_disk(str(root / "data"))
    DalleTokenizer.train_from_texts(all_captions(), vocab_size=300, max_text_length=16).save_pretrained(
        root / "tokenizer"
    )
    data = ["--dataset_name", str(root / "data"), "--resolution", "32"]
    load_script("train_vae").main(
        [
            *data,
            "--model_config",
            TINY_VAE,
            "--max_train_steps",
            "1",
            "--output_dir",
            str(root / "vae"),
            "--num_validation_images",
            "1",
        ]
    )
    load_script("pretokenize").main(
        [
            *data,
            "--vae_model_name_or_path",
            str(root / "vae"),
            "--tokenizer_name_or_path",
            str(root / "tokenizer"),
            "--output_dir",
            str(root / "tokens"),
        ]
    )
    return root / "tokens"


@pytest.fixture(scope="module")
def ddp_run(tokens, tmp_path_factory) -> Path:
    """train_dalle on 2 processes with batches of 4 (exact all-reduce)."""
    output_dir = tmp_path_factory.mktemp("ddp") / "run"
    launch("train_dalle", dalle_args(tokens, output_dir, 4), num_processes=2)
    return output_dir


def dalle_args(tokens: Path, output_dir: Path, batch_size: int, *extra: str) -> list[str]:
    return [
        "--pretokenized_dataset",
        str(tokens),
        "--model_config",
        TINY_DALLE,
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        "6",
        "--train_batch_size",
        str(batch_size),
        "--caption_dropout",
        "0",
        "--use_ema",
        "--ema_decay",
        "0.5",
        "--learning_rate",
        "3e-3",
        "--checkpointing_steps",
        "100",
        "--validation_steps",
        "100",
        "--logging_steps",
        "3",
        *extra,
    ]


def assert_close(a: dict, b: dict, atol: float):
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


def read_metrics(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one_process_with_the_global_batch(tokens, ddp_run, tmp_path):
    """DDP on 2 CPU processes with batches of 4 takes the same steps as 1 process with batches of 8: each rank reads
    its own half of every global batch and the gradients are averaged. Both ranks end with identical weights, EMA."""
    rank_0, rank_1 = (load_file(ddp_run / f"rank-{r}.safetensors") for r in (0, 1))
    assert_close(rank_0, rank_1, atol=0)
    load_script("train_dalle").main(dalle_args(tokens, tmp_path / "single", 8))
    raw = load_file(tmp_path / "single" / "transformer" / "model.non_ema.safetensors")
    ema = load_file(tmp_path / "single" / "transformer" / "model.safetensors")
    assert_close({name[len("model.") :]: t for name, t in rank_0.items() if name.startswith("model.")}, raw, atol=1e-5)
    assert_close({name[len("ema.") :]: t for name, t in rank_0.items() if name.startswith("ema.")}, ema, atol=1e-5)
    for ddp, one in zip(read_metrics(ddp_run), read_metrics(tmp_path / "single"), strict=True):
        assert ddp["loss"] == pytest.approx(one["loss"], rel=1e-5)  # the logged loss is the mean over both processes


def test_two_processes_with_powersgd(tokens, ddp_run, tmp_path):
    """PowerSGD (rank 1, from step 2) compresses the all-reduce: the replicas still agree exactly, and the weights
    differ from exact averaging (the compression really ran)."""
    output = launch(
        "train_dalle",
        dalle_args(tokens, tmp_path / "powersgd", 4, "--powersgd_rank", "1", "--powersgd_start_step", "2"),
        num_processes=2,
    )
    assert "Compressing the gradient all-reduce with PowerSGD of rank 1 from step 2" in output
    rank_0, rank_1 = (load_file(tmp_path / "powersgd" / f"rank-{r}.safetensors") for r in (0, 1))
    assert_close(rank_0, rank_1, atol=0)
    exact = load_file(ddp_run / "rank-0.safetensors")
    weight = "model.model.layers.0.mlp.fc_in.weight"
    assert not torch.allclose(rank_0[weight], exact[weight], atol=1e-6)
    assert all(torch.isfinite(tensor).all() for tensor in rank_0.values())


def test_bf16_mixed_precision_on_cpu(tokens, tmp_path):
    """bf16 autocast on CPU: the matmuls run in bf16 (the losses differ from fp32 in the low digits), the master
    weights stay float32, training still lowers the loss."""
    train_dalle = load_script("train_dalle")
    train_dalle.main(dalle_args(tokens, tmp_path / "fp32", 8))
    # Accelerate keeps one process-wide state; a new precision needs a fresh one (a new process, for a user).
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        train_dalle.main(dalle_args(tokens, tmp_path / "bf16", 8, "--mixed_precision", "bf16"))
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    fp32_logs, bf16_logs = read_metrics(tmp_path / "fp32"), read_metrics(tmp_path / "bf16")
    assert [log["loss"] for log in bf16_logs] != [log["loss"] for log in fp32_logs]
    for a, b in zip(fp32_logs, bf16_logs, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
    assert bf16_logs[-1]["loss"] < bf16_logs[0]["loss"]
    weights = load_file(tmp_path / "bf16" / "transformer" / "model.non_ema.safetensors")
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())


def test_per_resblock_gradient_scaling_in_the_training_loop(tokens, tmp_path):
    """A transformer with the paper's per-resblock gradient scaling (for fp16 on GPU): the loop unscales each
    branch's gradients before clipping and stepping, so in fp32 (power-of-two scales) training is unchanged: same
    logged gradient norms (65536x larger if the unscaling were skipped) and the same weights."""
    train_dalle = load_script("train_dalle")
    scaled_config = json.dumps({**json.loads(TINY_DALLE), "resblock_gradient_scaling": True})
    train_dalle.main(dalle_args(tokens, tmp_path / "plain", 8))
    train_dalle.main([*dalle_args(tokens, tmp_path / "scaled", 8), "--model_config", scaled_config])
    for plain, scaled in zip(read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "scaled"), strict=True):
        assert scaled["grad_norm"] == pytest.approx(plain["grad_norm"], rel=1e-4)
    plain_weights = load_file(tmp_path / "plain" / "transformer" / "model.non_ema.safetensors")
    scaled_weights = load_file(tmp_path / "scaled" / "transformer" / "model.non_ema.safetensors")
    assert_close(plain_weights, {name: scaled_weights[name] for name in plain_weights}, atol=1e-5)
    scales = [name for name in scaled_weights if name.endswith("gradient_scaler.scale")]
    assert len(scales) == 4 and all(scaled_weights[name].item() == 65536.0 for name in scales)


def test_gradient_checkpointing_and_accumulation_give_the_same_training(tokens, tmp_path):
    """--gradient_checkpointing recomputes activations (same gradients); --gradient_accumulation_steps 2 with half
    the batch sums to the same steps as the full batch."""
    train_dalle = load_script("train_dalle")
    train_dalle.main(dalle_args(tokens, tmp_path / "plain", 8))
    train_dalle.main(dalle_args(tokens, tmp_path / "checkpointed", 8, "--gradient_checkpointing"))
    train_dalle.main(dalle_args(tokens, tmp_path / "accumulated", 4, "--gradient_accumulation_steps", "2"))
    plain = load_file(tmp_path / "plain" / "transformer" / "model.non_ema.safetensors")
    assert_close(plain, load_file(tmp_path / "checkpointed" / "transformer" / "model.non_ema.safetensors"), atol=1e-6)
    assert_close(plain, load_file(tmp_path / "accumulated" / "transformer" / "model.non_ema.safetensors"), atol=1e-5)

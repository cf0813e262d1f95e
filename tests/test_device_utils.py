"""One rule for device and precision (hf_dalle.device_utils), as the library, the command line and the scripts use it:
the best device; half precision only where the device computes it fast; float32 on a CPU unless asked, with a warning
then."""

import logging

import pytest
import torch

from hf_dalle import DallePipeline
from hf_dalle.cli import main as cli_main
from hf_dalle.device_utils import default_dtype, resolve_device_and_dtype, slow_half_precision_warning
from hf_dalle.pipelines import pipeline_dalle
from hf_dalle.testing_utils import make_tiny_pipeline


def test_the_rule_picks_the_best_device_and_its_fast_precision(monkeypatch):
    assert resolve_device_and_dtype() == (torch.device("cpu"), torch.float32)  # no GPU here
    assert resolve_device_and_dtype("cpu", "bfloat16") == (torch.device("cpu"), torch.bfloat16)  # asked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_device_and_dtype() == (torch.device("cuda"), torch.bfloat16)
    assert resolve_device_and_dtype("cuda:1", "float32") == (torch.device("cuda:1"), torch.float32)
    assert resolve_device_and_dtype("cpu") == (torch.device("cpu"), torch.float32)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)  # a GPU before Ampere
    assert default_dtype("cuda") == torch.float16


@pytest.mark.parametrize(
    "device, dtype, message",
    [
        ("cuda", None, "The device 'cuda' is not available on this machine (available: cpu"),
        ("gpu", None, "The device must be one of auto, cuda, mps, cpu"),
        ("cpu", "float64", "The dtype must be one of auto, float32, bfloat16, float16, got 'float64'"),
    ],
)
def test_the_rule_refuses_what_it_cannot_do(device, dtype, message):
    with pytest.raises(ValueError) as error:
        resolve_device_and_dtype(device, dtype)
    assert message in str(error.value)


def test_half_precision_warning_is_for_a_cpu_only():
    assert "bfloat16 on the CPU" in slow_half_precision_warning("cpu", torch.bfloat16)
    assert "float16 on the CPU" in slow_half_precision_warning(torch.device("cpu"), torch.float16)
    assert slow_half_precision_warning("cpu", torch.float32) is None
    assert slow_half_precision_warning("cuda", torch.bfloat16) is None


def test_float16_weights_load_in_float32_unless_asked(tmp_path):
    """A converted ruDALL-E stores float16 weights: on a CPU they must not run in float16 by default."""
    pipe = make_tiny_pipeline(with_clip=False)
    pipe.transformer.to(torch.float16)
    pipe.save_pretrained(tmp_path)
    assert DallePipeline.from_pretrained(tmp_path).transformer.dtype == torch.float32
    assert DallePipeline.from_pretrained(tmp_path, dtype=torch.bfloat16).transformer.dtype == torch.bfloat16


def test_pipeline_warns_once_about_half_precision_on_a_cpu(caplog):
    pipe = make_tiny_pipeline(with_clip=False)
    pipeline_dalle._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        pipe("a red circle", num_candidates=1)
    assert "on the CPU" not in caplog.text  # float32: no warning
    pipe.to(torch.bfloat16)
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            pipe("a red circle", num_candidates=1)
    assert caplog.text.count("The model runs in bfloat16 on the CPU") == 1


def test_cli_device_and_dtype_flags(tmp_path, capsys, caplog):
    common = ["generate", "a red circle", "--num-candidates", "1", "--num-images", "1", "--output-dir", str(tmp_path)]
    pipeline_dalle._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert cli_main([*common, "--device", "cpu", "--dtype", "bfloat16"]) == 0
    assert "The model runs in bfloat16 on the CPU" in caplog.text and (tmp_path / "grid.png").is_file()
    with pytest.raises(SystemExit) as exit_info:
        cli_main([*common, "--device", "cuda"])
    assert "hf-dalle generate: error: The device 'cuda' is not available" in str(exit_info.value)
    with pytest.raises(SystemExit):
        cli_main([*common, "--dtype", "float64"])
    assert "--dtype: invalid choice: 'float64'" in capsys.readouterr().err

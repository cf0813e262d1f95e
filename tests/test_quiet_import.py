"""A newcomer's first commands are quiet and quick: `import hf_dalle` prints nothing (not even torchao's complaints
about its own build, when the `quantization` extra is installed) and `hf-dalle --help` imports neither torch nor
transformers."""

import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_the_models_prints_nothing():
    # Every layer that pulls in transformers / diffusers (and, through them, torchao when installed).
    result = run_python("from hf_dalle import DallePipeline, DalleConfig; import hf_dalle.training, hf_dalle.cli")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""


def test_only_the_import_noise_is_dropped():
    """The filters drop the known messages and nothing else those loggers say."""
    code = (
        "import logging, hf_dalle\n"
        "logging.basicConfig(format='%(message)s')\n"
        "logging.getLogger('torchao').warning('Failed to load x.so: bad build')\n"
        "logging.getLogger('torchao').warning('a real torchao warning')\n"
    )
    result = run_python(code)
    assert result.stderr == "a real torchao warning\n"


def test_help_imports_neither_torch_nor_transformers_and_is_quick():
    code = (
        "import sys\n"
        "from hf_dalle.cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['serve', '--help']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'diffusers', 'torchvision') if m in sys.modules))\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert "--dtype" in result.stdout and "--device" in result.stdout

    start = time.perf_counter()
    run_python("pass")
    baseline = time.perf_counter() - start
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "hf_dalle.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == ""
    # Generous for a loaded machine; importing torch alone takes longer than this.
    assert time.perf_counter() - start < baseline + 2.0


def test_the_wheel_ships_the_demo_model_without_setuptools_warnings(tmp_path):
    """`pip install` builds a wheel: setuptools must not warn that it would ignore the data folders (demo_model/ and
    its components, model_cards/), and the wheel must hold their files."""
    # Built from a copy of what the build reads: setuptools writes build/ and *.egg-info into the source tree.
    source = tmp_path / "source"
    shutil.copytree(REPO_ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    command = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(tmp_path / "wheel"),
        str(source),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "would be ignored" not in result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheel").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("model_index.json", "transformer/model.safetensors", "vae/config.json", "tokenizer/tokenizer.json"):
        assert f"hf_dalle/demo_model/{path}" in names
    assert "hf_dalle/model_cards/demo_model.md" in names

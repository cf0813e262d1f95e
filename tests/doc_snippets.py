"""Run documented snippets and command lines as a user would paste them (tests/test_readme.py).

A snippet runs in a subprocess, in a fresh folder that looks like a checkout: links to this repository's `scripts/`,
`configs/`, `src/`, Makefile..., `.venv` is the environment running the tests (and `make` takes its install stamps as
done), the Hub is a loopback server (tests/hub_server.py), HF_HOME is private. Files a snippet names that no test
machine has (ruDALL-E's and min-dalle's checkpoints, OpenAI's pickles, a folder of "my" images, ...) are made first as
tiny stand-ins (`STAND_INS`), unless the snippet writes them itself; training steps are cut to 2 (`tiny`).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from hub_server import LocalHub
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parents[1]
# What a user's checkout has and the snippets use (not tests/, benchmarks/ or .git).
CHECKOUT_LINKS = ("scripts", "configs", "src", "docs", "app.py", "Makefile", "setup.cfg", "pyproject.toml")
INSTALL_STAMPS = (".venv/.installed", ".venv/.installed-test", ".venv/.installed-web")  # the Makefile's


def tiny(text: str) -> str:
    """The snippet with its training runs cut to 2 steps."""
    return re.sub(r"(--max[_-]train[_-]steps) \d+", r"\1 2", text)


def make_checkout(folder: Path, hub: LocalHub) -> dict:
    """A working folder that looks like a checkout of this repository; returns the environment to run snippets in."""
    folder.mkdir(parents=True)
    for name in CHECKOUT_LINKS:
        (folder / name).symlink_to(REPO_ROOT / name)
    (folder / ".venv").symlink_to(sys.prefix)
    shims = folder / ".bin"
    shims.mkdir()
    # The environment running the tests is installed already: `make` skips the install targets.
    old = " ".join(f"-o {stamp}" for stamp in INSTALL_STAMPS)
    (shims / "make").write_text(f'#!/bin/sh\nexec {shutil.which("make")} {old} "$@"\n')
    (shims / "make").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "PYTEST_", "ACCELERATE_"))}
    env.update(
        PATH=os.pathsep.join([str(shims), str(Path(sys.executable).parent), env["PATH"]]),
        HF_ENDPOINT=hub.endpoint,
        HF_TOKEN="hf_local_hub_test_token",
        HF_HOME=str(folder / ".hf-home"),
        OMP_NUM_THREADS="1",  # the machines running the tests are shared
        GRADIO_ANALYTICS_ENABLED="False",
        MPLBACKEND="Agg",
    )
    return env


# ----------------------------------------------------------------------------------------------------- stand-ins


@dataclass
class World:
    """Where a snippet's stand-ins go: its working folder, the loopback Hub, the environment it runs in."""

    folder: Path
    hub: LocalHub
    env: dict

    def scratch(self, name: str) -> Path:
        path = self.folder.parent / "scratch" / name
        path.mkdir(parents=True)
        return path


# ruDALL-E's released names (`--model_name Malevich`) stand for the tiny checkpoint's sizes in a snippet's processes.
SHRINK_RUDALLE_RELEASES = """\
import dataclasses, json, os
from hf_dalle.conversion import convert_rudalle

for name, release in convert_rudalle.RUDALLE_MODELS.items():
    convert_rudalle.RUDALLE_MODELS[name] = dataclasses.replace(
        release, model_params=json.loads(os.environ["TINY_RUDALLE_PARAMS"])
    )
"""


def tiny_rudalle_files(world: World, folder: Path | None = None) -> dict:
    """ruDALL-E's files under their released names, tiny: `pytorch_model_v3.bin` (and v2), `bpe.model`, the Sber
    VQGAN's checkpoint and YAML config, a ruCLIP folder; also in ruDALL-E's Hub repos. Returns the model's params."""
    from test_convert_rudalle import RUCLIP_CONFIG, tiny_params, write_tiny_rudalle
    from test_convert_rudalle_vqgan import small_taming_config

    from hf_dalle.conversion.convert_rudalle import (
        RUDALLE_MODELS,
        RUDALLE_TOKENIZER_FILENAME,
        RUDALLE_UTILS_REPO,
        RUDALLE_VQGAN_FILENAMES,
    )
    from hf_dalle.testing_utils import random_ruclip_state_dict, random_taming_vqgan_state_dict

    folder = folder or world.folder
    params = {**tiny_params(grid=8), "image_vocab_size": 64}  # small_taming_config: 32x32 pixels, 8x8 codes of 64
    write_tiny_rudalle(params, folder)
    shutil.copy(folder / "pytorch_model.bin", folder / "pytorch_model_v3.bin")
    shutil.copy(folder / "pytorch_model.bin", folder / "pytorch_model_v2.bin")
    vqgan = folder / RUDALLE_VQGAN_FILENAMES[False]
    taming = random_taming_vqgan_state_dict(  # small_taming_config's sizes, as ruDALL-E's GumbelVQ lays them out
        vocab_size=64, embed_dim=32, latent_channels=32, block_out_channels=(32, 64, 64), layers_per_block=1,
        attention_levels=(2,), with_encoder=True, gumbel=True,
    )  # fmt: skip
    torch.save({"state_dict": taming}, vqgan)
    (folder / "vqgan.gumbelf8-sber.config.yml").write_text(yaml.safe_dump(small_taming_config()))
    ruclip = folder / "ruclip-vit-base-patch32-384"
    ruclip.mkdir()
    shutil.copy(folder / "bpe.model", ruclip / "bpe.model")
    ruclip_config = {**RUCLIP_CONFIG, "vocab_size": 16}
    (ruclip / "config.json").write_text(json.dumps(ruclip_config))
    torch.save(random_ruclip_state_dict(ruclip_config), ruclip / "pytorch_model.bin")

    for release in RUDALLE_MODELS.values():
        world.hub.add_files(release.repo_id, {release.filename: folder / "pytorch_model.bin"})
    world.hub.add_files(RUDALLE_UTILS_REPO, {RUDALLE_TOKENIZER_FILENAME: folder / "bpe.model", vqgan.name: vqgan})
    site = world.scratch("site")
    (site / "sitecustomize.py").write_text(SHRINK_RUDALLE_RELEASES)
    world.env.update(PYTHONPATH=str(site), TINY_RUDALLE_PARAMS=json.dumps(params))
    return params


def converted_rudalle(world: World) -> None:
    from hf_dalle.conversion.convert_rudalle import convert_rudalle

    files = world.scratch("rudalle")
    params = tiny_rudalle_files(world, files)
    convert_rudalle(
        files / "pytorch_model.bin",
        params,
        world.folder / "rudalle-malevich",
        tokenizer=files / "bpe.model",
        vqgan_checkpoint=files / "vqgan.gumbelf8-sber.model.ckpt",
        vqgan_config=files / "vqgan.gumbelf8-sber.config.yml",
        ruclip_dir=files / "ruclip-vit-base-patch32-384",
    )


def tiny_mega_config(model_name: str):
    """As small as the converter's default head counts allow (Mega 32 heads, Mini 16)."""
    from test_convert_dalle_mega import tiny_config

    heads = 32 if model_name == "mega" else 16
    return tiny_config(
        hidden_size=64, num_attention_heads=heads, decoder_vocab_size=66 if model_name == "mega" else 65
    )


def min_dalle_files(world: World) -> None:
    """min-dalle's `models_root` (`pretrained/`), its Hub repo kuprel/min-dalle (Mini's files end in `_mini`),
    dalle-mini's Flax VQGAN and a CLIP on the Hub, all tiny."""
    from hf_dalle.conversion.convert_dalle_mega import MIN_DALLE_HUB_REPO, MIN_DALLE_MODELS
    from hf_dalle.testing_utils import (
        detoker_state_dict,
        make_tiny_pipeline,
        random_taming_vqgan_state_dict,
        small_vqgan_sizes,
        write_flax_vqgan_checkpoint,
        write_min_dalle_models_root,
    )

    taming = random_taming_vqgan_state_dict(**small_vqgan_sizes(tiny_mega_config("mega")), with_encoder=True, seed=3)
    write_min_dalle_models_root(
        world.folder / "pretrained", tiny_mega_config("mega"), "mega", detoker=detoker_state_dict(taming)
    )
    hub_files = {"detoker.pt": world.folder / "pretrained" / "vqgan" / "detoker.pt"}
    for name, model in MIN_DALLE_MODELS.items():
        root = world.scratch(f"min-dalle-{name}")
        write_min_dalle_models_root(root, tiny_mega_config(name), name)
        hub_files |= {f"{p.stem}{model.hub_suffix}{p.suffix}": p for p in (root / model.folder).iterdir()}
    world.hub.add_files(MIN_DALLE_HUB_REPO, hub_files)
    flax = world.folder / "vqgan_imagenet_f16_16384" / "flax_model.msgpack"
    flax.parent.mkdir()
    write_flax_vqgan_checkpoint(flax, taming)

    pipe, clip = make_tiny_pipeline(with_clip=True), world.scratch("clip")
    pipe.clip_model.save_pretrained(clip)
    pipe.clip_processor.save_pretrained(clip)
    world.hub.add_files("openai/clip-vit-base-patch32", {p.name: p for p in clip.iterdir()})


def converted_mega(world: World) -> None:
    """`dalle-mega` as the README's first conversion writes it: with the VQGAN's encoder and a CLIP."""
    from hf_dalle.conversion.convert_dalle_mega import convert_dalle_mega

    min_dalle_files(world)
    convert_dalle_mega(
        world.folder / "dalle-mega",
        "mega",
        world.folder / "pretrained",
        vqgan_flax_checkpoint=world.folder / "vqgan_imagenet_f16_16384" / "flax_model.msgpack",
        clip_model=world.folder.parent / "scratch" / "clip",  # min_dalle_files put the tiny CLIP there
    )


def openai_dvae_pickles(world: World, folder: Path | None = None) -> None:
    """`encoder.pkl` and `decoder.pkl` as OpenAI saved them (whole `dall_e` modules), tiny."""
    from test_convert_openai_dvae import make_openai_dvae, save_openai_dvae

    encoder, decoder = make_openai_dvae(n_hid=16, n_blk_per_group=1, vocab_size=64, n_init=8)
    save_openai_dvae(encoder, decoder, folder or world.folder, storage="module")


def converted_openai_dvae(world: World) -> None:
    from hf_dalle import convert_openai_dvae

    pickles = world.scratch("openai-dvae")
    openai_dvae_pickles(world, pickles)
    vae = convert_openai_dvae(pickles / "encoder.pkl", pickles / "decoder.pkl")
    vae.save_pretrained(world.folder / "dalle-vae-openai")


def my_images(world: World) -> None:
    """An imagefolder of 64 shapes-world drawings (64x64) with `metadata.jsonl` (`file_name`, `caption`)."""
    from hf_dalle.data import render_caption, split_captions

    folder = world.folder / "my_images"
    folder.mkdir()
    captions = split_captions("train")[::7][:64]
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index, caption in enumerate(captions):
            render_caption(caption, seed=index).save(folder / f"{index:04d}.png")
            metadata.write(json.dumps({"file_name": f"{index:04d}.png", "caption": caption}) + "\n")


def a_photo(world: World) -> None:
    """A photo of another size than any model's."""
    pixels = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(world.folder / "photo.jpg")


def demo_lora_adapter(world: World) -> None:
    """A LoRA adapter of the demo model's transformer, as `train_dalle.py --lora_rank` saves one."""
    import hf_dalle
    from hf_dalle import DalleForImageGeneration
    from hf_dalle.lora import add_lora_adapter, save_lora_adapter

    transformer = DalleForImageGeneration.from_pretrained(hf_dalle.DEMO_MODEL_DIR, subfolder="transformer")
    add_lora_adapter(transformer, rank=4)
    save_lora_adapter(transformer, world.folder / "my-lora")


def demo_vae(world: World) -> None:
    """The demo model's dVAE where `scripts/train_demo.sh` leaves its own (`runs/demo/vae`)."""
    import hf_dalle

    shutil.copytree(Path(hf_dalle.DEMO_MODEL_DIR) / "vae", world.folder / "runs" / "demo" / "vae")


def captions_file(world: World) -> None:
    (world.folder / "captions.txt").write_text("a red circle above a blue square\na green triangle\n")


def tiny_pipeline(world: World) -> None:
    from hf_dalle.testing_utils import make_tiny_pipeline

    make_tiny_pipeline(with_clip=True).save_pretrained(world.folder / "my-dalle")


def _path(name: str) -> str:
    """A regex for `name` as a path on its own (not part of another word or path)."""
    return rf"(?<![\w./-]){re.escape(name)}(?![\w-])"


# (what it makes, the regex of a snippet that needs it, how it is made): made unless the snippet writes it itself.
STAND_INS: list[tuple[str, str, Callable[[World], None]]] = [
    ("my_images", _path("my_images"), my_images),
    ("photo.jpg", _path("photo.jpg"), a_photo),
    ("encoder.pkl", _path("encoder.pkl"), openai_dvae_pickles),
    ("dalle-vae-openai", _path("dalle-vae-openai"), converted_openai_dvae),
    ("pytorch_model_v3.bin", r"convert_rudalle\.py|convert_sber_vqgan\(|convert_ruclip\(", tiny_rudalle_files),
    ("rudalle-malevich", _path("rudalle-malevich"), converted_rudalle),
    ("pretrained", r"convert_dalle_mega\.py", min_dalle_files),
    ("dalle-mega", _path("dalle-mega"), converted_mega),
    ("my-lora", _path("my-lora"), demo_lora_adapter),
    ("my-dalle", _path("my-dalle"), tiny_pipeline),
    ("runs/demo/vae", _path("runs/demo/vae"), demo_vae),
    ("captions.txt", _path("captions.txt"), captions_file),
]

# How a snippet says it writes a file or folder: it is then not stood in for, and checked afterwards.
_OUTPUT_PATTERNS = [
    r"--output[-_]dir[ =]+[\"']?([\w./-]+)",
    r"save_pretrained\(\s*[\"']([^\"']+)[\"']",
    r"\.save\(\s*[\"']([^\"']+)[\"']",
    r"(?<![-0-9&>])> *([\w./-]+)",  # a shell redirection
]


def outputs_of(text: str) -> list[str]:
    """The paths a snippet says it writes (relative to its working folder)."""
    return list(dict.fromkeys(m.rstrip("/") for pattern in _OUTPUT_PATTERNS for m in re.findall(pattern, text)))


def checkout_for(text: str, folder: Path, hub: LocalHub) -> tuple[dict, list[str]]:
    """A checkout-like `folder` with the stand-ins `text` needs; returns the environment to run it in and the names of
    the stand-ins made."""
    env = make_checkout(folder, hub)
    world, written = World(folder, hub, env), set(outputs_of(text))
    made = [(name, make) for name, trigger, make in STAND_INS if re.search(trigger, text) and name not in written]
    for _, make in made:
        make(world)
    return env, [name for name, _ in made]


def run_snippet(text: str, language: str, folder: Path, env: dict) -> subprocess.CompletedProcess:
    """Run a Python script or a shell snippet (`bash -e`) in `folder`."""
    if language == "python":
        (folder / "snippet.py").write_text(text, encoding="utf-8")
        command = [sys.executable, "snippet.py"]
    else:
        (folder / "snippet.sh").write_text("set -euo pipefail\n" + text, encoding="utf-8")
        command = ["bash", "snippet.sh"]
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=900)


def check_output(path: Path) -> None:
    """A file or folder a snippet promised: it exists and is what its name says (an image opens, JSON parses, a
    pipeline folder has the components its model_index.json lists, a folder is not empty)."""
    assert path.exists(), f"{path.name} was not written"
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        assert files, f"{path.name}/ is empty"
        for file in files:
            if file.suffix in (".json", ".png", ".jpg"):
                check_output(file)
        if (path / "model_index.json").is_file():
            for name, value in json.loads((path / "model_index.json").read_text()).items():
                if isinstance(value, list) and str(value[0]).split(".")[0] in (
                    "transformers",
                    "diffusers",
                    "hf_dalle",
                ):
                    assert (path / name).is_dir(), f"{path.name}/model_index.json lists {name} but {name}/ is missing"
    elif path.suffix in (".png", ".jpg"):
        with Image.open(path) as image:
            image.verify()
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))
    else:
        assert path.stat().st_size > 0, f"{path.name} is empty"


# ---------------------------------------------------------------------------------------------------- servers


def serve_until_answered(command: str, folder: Path, env: dict, port: int, timeout: float = 300) -> str:
    """Start a server command in its own process group, wait until http://127.0.0.1:port/ answers, stop the group.
    Returns the page."""
    process = subprocess.Popen(
        ["bash", "-c", command], cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{command!r} exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    return response.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(1)
        raise AssertionError(f"{command!r} did not answer on port {port} within {timeout} s")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

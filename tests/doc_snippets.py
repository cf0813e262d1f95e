"""Run documented commands and snippets as a user would: the machinery of tests/test_readme.py (README blocks) and
tests/test_scripts_cli.py (the command lines of each script's docstring).

A snippet runs in a subprocess, in a fresh working folder that looks like a checkout (`scripts/`, `configs/`, `src/`,
the Makefile and `setup.cfg` are links to this repository's; `.venv` is the environment running the tests), with:

- `python`, `accelerate`, `hf-dalle` of that environment first on PATH, and a `make` that never installs anything
  (`make -o` on the Makefile's install stamps: the environment running the tests is installed already);
- the Hub pointed at a loopback server (`tests/hub_server.py`) holding tiny stand-ins of the repos the snippet names,
  a private HF_HOME, OMP_NUM_THREADS=1 (the machines running the tests are shared);
- tiny stand-ins, made first, for every file a snippet names that no test machine can have (OpenAI's `encoder.pkl`,
  ruDALL-E's `pytorch_model_v3.bin`, min-dalle's `models_root`, a folder of "my" images, ...): `STAND_INS`. A name the
  snippet itself writes (`--output_dir NAME`, `save_pretrained("NAME")`, `> NAME`) is not made. ruDALL-E's released
  model names (`--model_name Malevich`) stand for a tiny config (`TINY_RUDALLE_PARAMS`), through a `sitecustomize`
  that replaces `RUDALLE_MODELS`' sizes when the converter is imported: the command line is the documented one, the
  weights are small;
- a few sizes made tiny (`TINY_FLAGS`: training steps), so that a recipe runs end to end in seconds.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import yaml
from huggingface_hub import HfApi
from PIL import Image


REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent
# What a working folder links to: what a user's checkout has and the snippets use (not tests/, benchmarks/ or .git).
CHECKOUT_LINKS = ("scripts", "configs", "src", "docs", "app.py", "Makefile", "setup.cfg", "pyproject.toml")
# The Makefile's install stamps: `make` in a snippet takes them as done (the running environment is installed).
INSTALL_STAMPS = (".venv/.installed", ".venv/.installed-test", ".venv/.installed-web")
HUB_TOKEN = "hf_local_hub_test_token"

# Sizes that make a documented recipe run in seconds, applied to every snippet (pattern, replacement).
TINY_FLAGS = [
    (re.compile(r"--max_train_steps \d+"), "--max_train_steps 2"),
    (re.compile(r"--max-train-steps \d+"), "--max-train-steps 2"),
]


def tiny(text: str) -> str:
    for pattern, replacement in TINY_FLAGS:
        text = pattern.sub(replacement, text)
    return text


# ----------------------------------------------------------------------------------------------- working folder


def make_checkout(folder: Path) -> Path:
    """A working folder that looks like a checkout of this repository, with a `bin/` of shims for PATH."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CHECKOUT_LINKS:
        if (REPO_ROOT / name).exists():
            (folder / name).symlink_to(REPO_ROOT / name)
    (folder / ".venv").symlink_to(Path(sys.prefix))
    shims = folder.parent / f"{folder.name}-bin"
    shims.mkdir(exist_ok=True)
    make = shutil.which("make")
    if make:
        old = " ".join(f"-o {stamp}" for stamp in INSTALL_STAMPS)
        (shims / "make").write_text(f'#!/bin/sh\nexec {make} {old} "$@"\n')
        (shims / "make").chmod(0o755)
    return shims


def snippet_environment(folder: Path, hub_endpoint: str, extra: dict | None = None) -> dict:
    """The environment a snippet runs in (see the module docstring)."""
    shims = folder.parent / f"{folder.name}-bin"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("HF_", "HUGGINGFACE_", "PYTEST_", "ACCELERATE_")) and key not in ("PYTHONPATH",)
    }
    env.update(
        PATH=os.pathsep.join([str(shims), str(Path(sys.executable).parent), env.get("PATH", "")]),
        HF_ENDPOINT=hub_endpoint,
        HF_TOKEN=HUB_TOKEN,
        HF_HUB_OFFLINE="0",
        HF_HOME=str(folder.parent / f"{folder.name}-hf-home"),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        MPLBACKEND="Agg",
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra or {})
    return env


# ----------------------------------------------------------------------------------------------------- stand-ins


@dataclass
class World:
    """What a snippet's stand-ins are made in: its working folder and the loopback Hub."""

    folder: Path
    hub_endpoint: str
    env: dict = field(default_factory=dict)  # extra environment variables the stand-ins ask for

    @property
    def api(self) -> HfApi:
        return HfApi(endpoint=self.hub_endpoint, token=HUB_TOKEN)

    def upload(self, repo_id: str, files: dict[str, Path]) -> None:
        self.api.create_repo(repo_id, exist_ok=True)
        for name, path in files.items():
            self.api.upload_file(path_or_fileobj=str(path), path_in_repo=name, repo_id=repo_id)

    @property
    def scratch(self) -> Path:
        path = self.folder.parent / f"{self.folder.name}-scratch"
        path.mkdir(exist_ok=True)
        return path


# A tiny stand-in for every released ruDALL-E transformer: 8 caption positions, an 8x8 grid of 64 codes (the tiny
# Sber-layout VQGAN's: 32x32 pixels).
TINY_RUDALLE_PARAMS = {
    "num_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "text_seq_length": 8,
    "image_tokens_per_dim": 8,
    "vocab_size": 16 + 8,
    "image_vocab_size": 64,
    "cogview_sandwich_layernorm": True,
}

SITECUSTOMIZE = '''"""Written by tests/doc_snippets.py: ruDALL-E's released model names stand for a tiny config in this process."""
import importlib.machinery, json, os, sys

_TINY = json.loads(os.environ["HF_DALLE_TEST_RUDALLE_PARAMS"])
_NAME = "hf_dalle.conversion.convert_rudalle"


class _ShrinkReleases:
    def find_spec(self, name, path=None, target=None):
        if name != _NAME:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        exec_module = spec.loader.exec_module

        def shrink(module):
            exec_module(module)
            for key, release in list(module.RUDALLE_MODELS.items()):
                module.RUDALLE_MODELS[key] = type(release)(release.hf_version, dict(_TINY), release.repo_id, release.filename)

        spec.loader.exec_module = shrink
        return spec


sys.meta_path.insert(0, _ShrinkReleases())
'''


def shrink_rudalle_releases(world: World) -> None:
    """Make `--model_name Malevich` (any release) mean `TINY_RUDALLE_PARAMS` in the snippet's processes."""
    site = world.folder.parent / f"{world.folder.name}-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    world.env["PYTHONPATH"] = str(site)
    world.env["HF_DALLE_TEST_RUDALLE_PARAMS"] = json.dumps(TINY_RUDALLE_PARAMS)


def _tiny_rudalle_state_dict(hf_version: str = "v3") -> dict:
    from hf_dalle.testing_utils import random_rudalle_state_dict

    return random_rudalle_state_dict(TINY_RUDALLE_PARAMS)


def _write_yttm_bpe(path: Path) -> Path:
    """A YouTokenToMe `bpe.model` that spells кот, пёс and a few more Russian letters (ids below 16)."""
    chars = {"\u2581": 4, "к": 5, "о": 6, "т": 7, "п": 8, "ё": 9, "с": 10}
    rules = [(4, 5, 11), (6, 7, 12), (11, 12, 13), (4, 8, 14), (9, 10, 15)]
    lines = [f"{len(chars)} {len(rules)}"]
    lines += [f"{ord(char)} {token_id}" for char, token_id in chars.items()]
    lines += [f"{x} {y} {z}" for x, y, z in rules]
    lines.append("1 0 2 3")  # unk, pad, bos, eos
    path.write_text("\n".join(lines) + "\n")
    return path


SBER_VQGAN_SIZES = {  # a Sber-layout GumbelVQ: 32x32 pixels -> 8x8 codes from 64
    "vocab_size": 64,
    "embed_dim": 32,
    "latent_channels": 32,
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "attention_levels": (2,),
}


def _sber_vqgan_yaml() -> dict:
    return {
        "model": {
            "target": "taming.models.vqgan.GumbelVQ",
            "params": {
                "kl_weight": 1.0e-08,
                "embed_dim": 32,
                "n_embed": 64,
                "ddconfig": {
                    "double_z": False,
                    "z_channels": 32,
                    "resolution": 32,
                    "in_channels": 3,
                    "out_ch": 3,
                    "ch": 32,
                    "ch_mult": [1, 2, 2],
                    "num_res_blocks": 1,
                    "attn_resolutions": [8],
                    "dropout": 0.0,
                },
            },
        }
    }


def _write_sber_vqgan(folder: Path) -> tuple[Path, Path]:
    from hf_dalle.conversion.convert_rudalle import RUDALLE_VQGAN_FILENAMES
    from hf_dalle.testing_utils import random_taming_vqgan_state_dict

    checkpoint, config = folder / RUDALLE_VQGAN_FILENAMES[False], folder / "vqgan.gumbelf8-sber.config.yml"
    state_dict = random_taming_vqgan_state_dict(**SBER_VQGAN_SIZES, with_encoder=True, gumbel=True)
    torch.save({"state_dict": state_dict}, checkpoint)
    config.write_text(yaml.safe_dump(_sber_vqgan_yaml()))
    return checkpoint, config


RUCLIP_CONFIG = {
    "embed_dim": 16,
    "image_resolution": 32,
    "vision_layers": 1,
    "vision_width": 64,
    "vision_patch_size": 16,
    "context_length": 8,
    "transformer_width": 32,
    "transformer_heads": 2,
    "transformer_layers": 1,
    "vocab_size": 16,
}


def _write_ruclip(folder: Path) -> Path:
    from hf_dalle.testing_utils import random_ruclip_state_dict

    folder.mkdir(parents=True, exist_ok=True)
    _write_yttm_bpe(folder / "bpe.model")
    (folder / "config.json").write_text(json.dumps(RUCLIP_CONFIG))
    torch.save(random_ruclip_state_dict(RUCLIP_CONFIG), folder / "pytorch_model.bin")
    return folder


def rudalle_files(world: World) -> None:
    """ruDALL-E's released files under their names: `pytorch_model_v3.bin` (and v2), `bpe.model`, the Sber VQGAN's
    checkpoint and YAML, a ruCLIP folder; with `--from_hub` in the snippet, the same files in ruDALL-E's Hub repos."""
    from hf_dalle.conversion.convert_rudalle import (
        RUDALLE_MODELS,
        RUDALLE_TOKENIZER_FILENAME,
        RUDALLE_UTILS_REPO,
        RUDALLE_VQGAN_FILENAMES,
    )

    shrink_rudalle_releases(world)
    folder = world.folder
    checkpoint = folder / "pytorch_model_v3.bin"
    torch.save(_tiny_rudalle_state_dict(), checkpoint)
    shutil.copy(checkpoint, folder / "pytorch_model_v2.bin")
    _write_yttm_bpe(folder / RUDALLE_TOKENIZER_FILENAME)
    vqgan_checkpoint, _ = _write_sber_vqgan(folder)
    _write_ruclip(folder / "ruclip-vit-base-patch32-384")
    for release in RUDALLE_MODELS.values():
        world.upload(release.repo_id, {release.filename: checkpoint})
    world.upload(
        RUDALLE_UTILS_REPO,
        {
            RUDALLE_TOKENIZER_FILENAME: folder / RUDALLE_TOKENIZER_FILENAME,
            RUDALLE_VQGAN_FILENAMES[False]: vqgan_checkpoint,
        },
    )


def converted_rudalle(world: World, name: str = "rudalle-malevich") -> None:
    """A converted tiny ruDALL-E pipeline folder (tokenizer, VQGAN, ruCLIP), as convert_rudalle.py writes it."""
    from hf_dalle.conversion.convert_rudalle import convert_rudalle

    scratch = world.scratch / "rudalle"
    scratch.mkdir()
    torch.save(_tiny_rudalle_state_dict(), scratch / "pytorch_model_v3.bin")
    vqgan_checkpoint, vqgan_config = _write_sber_vqgan(scratch)
    convert_rudalle(
        scratch / "pytorch_model_v3.bin",
        {**TINY_RUDALLE_PARAMS, "hf_version": "v3"},
        world.folder / name,
        tokenizer=_write_yttm_bpe(scratch / "bpe.model"),
        vqgan_checkpoint=vqgan_checkpoint,
        vqgan_config=vqgan_config,
        ruclip_dir=_write_ruclip(scratch / "ruclip"),
    )


def sber_vqgan_files(world: World) -> None:
    _write_sber_vqgan(world.folder)


def ruclip_folder(world: World) -> None:
    _write_ruclip(world.folder / "ruclip-vit-base-patch32-384")


def tiny_mega_config(model_name: str = "mega"):
    """A DalleBart as small as min-dalle's head counts allow (Mega 32, Mini 16 heads: width 64)."""
    from hf_dalle import DalleBartConfig

    return DalleBartConfig(
        text_vocab_size=400,
        image_vocab_size=64,
        decoder_vocab_size=66 if model_name == "mega" else 65,
        max_text_length=16,
        image_grid_size=4,
        hidden_size=64,
        encoder_layers=1,
        decoder_layers=1,
        num_attention_heads=32 if model_name == "mega" else 16,
        intermediate_size=96,
        decoder_start_token_id=63,
    )


def _mega_vqgan_state_dict(config) -> dict:
    from hf_dalle.testing_utils import random_taming_vqgan_state_dict, small_vqgan_sizes

    return random_taming_vqgan_state_dict(**small_vqgan_sizes(config), with_encoder=True, seed=3)


def min_dalle_models_root(world: World, root: str = "pretrained") -> None:
    """min-dalle's `models_root` for Mega (`dalle_bart_mega/`, `vqgan/detoker.pt`), tiny, under `root`."""
    from hf_dalle.testing_utils import detoker_state_dict, write_min_dalle_models_root

    config = tiny_mega_config("mega")
    write_min_dalle_models_root(
        world.folder / root, config, "mega", detoker=detoker_state_dict(_mega_vqgan_state_dict(config))
    )


def min_dalle_hub(world: World) -> None:
    """The Hub repo kuprel/min-dalle with Mini's and Mega's files (Mini's end in `_mini`), tiny."""
    from hf_dalle.conversion.convert_dalle_mega import MIN_DALLE_HUB_REPO, MIN_DALLE_MODELS
    from hf_dalle.testing_utils import detoker_state_dict, write_min_dalle_models_root

    files = {}
    for name, model in MIN_DALLE_MODELS.items():
        config = tiny_mega_config(name)
        root = world.scratch / f"min-dalle-{name}"
        write_min_dalle_models_root(root, config, name, detoker=detoker_state_dict(_mega_vqgan_state_dict(config)))
        for path in (root / model.folder).iterdir():
            files[f"{path.stem}{model.hub_suffix}{path.suffix}"] = path
        files["detoker.pt"] = root / "vqgan" / "detoker.pt"  # the same VQGAN for both
    world.upload(MIN_DALLE_HUB_REPO, files)


def write_flax_msgpack(path: Path, taming_state_dict: dict) -> None:
    """A Flax VQGAN checkpoint as vqgan-jax writes one (see tests/test_convert_dalle_mega.py)."""
    import msgpack

    tree: dict = {}
    for key, tensor in taming_state_dict.items():
        key = re.sub(r"(\w+)\.(\d+)", r"\1_\2", key)
        *modules, leaf = key.split(".")
        array = tensor.numpy()
        if modules == ["quantize", "embedding"]:
            leaf = "embedding"
        elif leaf == "weight" and "norm" in modules[-1]:
            leaf = "scale"
        elif leaf == "weight":
            leaf, array = "kernel", np.ascontiguousarray(array.transpose(2, 3, 1, 0))
        node = tree
        for module in modules:
            node = node.setdefault(module, {})
        node[leaf] = msgpack.ExtType(
            1, msgpack.packb((array.shape, array.dtype.name, array.tobytes()), use_bin_type=True)
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))


def flax_vqgan(world: World) -> None:
    """dalle-mini's `vqgan_imagenet_f16_16384/flax_model.msgpack`: the whole VQGAN of the tiny min-dalle files."""
    write_flax_msgpack(
        world.folder / "vqgan_imagenet_f16_16384" / "flax_model.msgpack", _mega_vqgan_state_dict(tiny_mega_config())
    )


def tiny_clip_on_hub(repo_id: str) -> Callable[[World], None]:
    """A tiny CLIPModel + CLIPProcessor under a Hub id (e.g. openai/clip-vit-base-patch32)."""

    def make(world: World) -> None:
        from hf_dalle.testing_utils import make_tiny_pipeline

        pipe = make_tiny_pipeline(with_clip=True)
        folder = world.scratch / repo_id.replace("/", "--")
        pipe.clip_model.save_pretrained(folder)
        pipe.clip_processor.save_pretrained(folder)
        world.upload(repo_id, {path.name: path for path in folder.iterdir() if path.is_file()})

    return make


def converted_mega(world: World, name: str = "dalle-mega") -> None:
    """A converted tiny DALL·E Mega folder, as convert_dalle_mega.py writes it."""
    from hf_dalle.conversion.convert_dalle_mega import convert_dalle_mega
    from hf_dalle.testing_utils import detoker_state_dict, write_min_dalle_models_root

    config, root = tiny_mega_config("mega"), world.scratch / "min-dalle-root"
    write_min_dalle_models_root(root, config, "mega", detoker=detoker_state_dict(_mega_vqgan_state_dict(config)))
    convert_dalle_mega(world.folder / name, "mega", root)


def openai_dvae_pickles(world: World) -> None:
    """`encoder.pkl` and `decoder.pkl` as OpenAI saved them (whole `dall_e` modules), tiny; needs `dall_e`."""
    import dall_e  # the test extra installs it (--no-deps)

    torch.manual_seed(0)
    encoder = dall_e.Encoder(n_hid=16, n_blk_per_group=1, vocab_size=64)
    decoder = dall_e.Decoder(n_init=8, n_hid=16, n_blk_per_group=1, vocab_size=64)
    torch.save(encoder, world.folder / "encoder.pkl")
    torch.save(decoder, world.folder / "decoder.pkl")


def converted_openai_dvae(world: World, name: str = "dalle-vae-openai") -> None:
    from hf_dalle import convert_openai_dvae

    scratch = World(world.scratch, world.hub_endpoint)
    openai_dvae_pickles(scratch)
    convert_openai_dvae(world.scratch / "encoder.pkl", world.scratch / "decoder.pkl").save_pretrained(
        world.folder / name
    )


def my_images(world: World, name: str = "my_images", count: int = 64) -> None:
    """An imagefolder of `count` 64x64 shapes-world drawings with `metadata.jsonl` (`file_name`, `caption`)."""
    from hf_dalle.data import render_caption, split_captions

    folder = world.folder / name
    folder.mkdir()
    captions = split_captions("train")
    with open(folder / "metadata.jsonl", "w", encoding="utf-8") as metadata:
        for index in range(count):
            caption = captions[(index * 7919) % len(captions)]
            render_caption(caption, seed=index, image_size=64).save(folder / f"{index:04d}.png")
            metadata.write(json.dumps({"file_name": f"{index:04d}.png", "caption": caption}) + "\n")


def a_photo(world: World, name: str = "photo.jpg") -> None:
    """A photo of another size than any model's (300x200 JPEG)."""
    pixels = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(world.folder / name, quality=90)


def tiny_pipeline_folder(world: World, name: str) -> None:
    from hf_dalle.testing_utils import make_tiny_pipeline

    make_tiny_pipeline(with_clip=True).save_pretrained(world.folder / name)


def demo_lora_adapter(world: World, name: str = "my-lora") -> None:
    """A LoRA adapter for the demo model's transformer (rank 4, small random weights), as train_dalle.py saves one."""
    import hf_dalle
    from hf_dalle import DalleForImageGeneration
    from hf_dalle.lora import add_lora_adapter, save_lora_adapter

    transformer = DalleForImageGeneration.from_pretrained(hf_dalle.DEMO_MODEL_DIR, subfolder="transformer")
    add_lora_adapter(transformer, rank=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter_name, parameter in transformer.named_parameters():
            if "lora_" in parameter_name:
                parameter.copy_(0.01 * torch.randn(parameter.shape, generator=generator))
    save_lora_adapter(transformer, world.folder / name)


@dataclass
class StandIn:
    """What to make (`make(world)`) when a snippet matches `trigger` (a regex), unless it writes `name` itself."""

    name: str
    trigger: str
    make: Callable[[World], None]


def _token(name: str) -> str:
    """A regex for `name` as a path on its own (not part of another word or path)."""
    return rf"(?<![\w./-]){re.escape(name)}(?![\w-])"


STAND_INS = [
    StandIn("my_images", _token("my_images"), my_images),
    StandIn("photo.jpg", _token("photo.jpg"), a_photo),
    StandIn("encoder.pkl", _token("encoder.pkl"), openai_dvae_pickles),
    StandIn("dalle-vae-openai", _token("dalle-vae-openai"), converted_openai_dvae),
    StandIn("pytorch_model_v3.bin", r"convert_rudalle\.py", rudalle_files),
    StandIn("vqgan.gumbelf8-sber.model.ckpt", r"convert_sber_vqgan\(", sber_vqgan_files),
    StandIn("ruclip-vit-base-patch32-384", r"convert_ruclip\(", ruclip_folder),
    StandIn("rudalle-malevich", _token("rudalle-malevich"), converted_rudalle),
    StandIn("pretrained", r"--min_dalle_dir pretrained\b", min_dalle_models_root),
    StandIn("kuprel/min-dalle", r"convert_dalle_mega\.py[^\n]*--from_hub", min_dalle_hub),
    StandIn("vqgan_imagenet_f16_16384", _token("vqgan_imagenet_f16_16384"), flax_vqgan),
    StandIn(
        "openai/clip-vit-base-patch32",
        _token("openai/clip-vit-base-patch32"),
        tiny_clip_on_hub("openai/clip-vit-base-patch32"),
    ),
    StandIn("dalle-mega", _token("dalle-mega"), converted_mega),
    StandIn("my-lora", _token("my-lora"), demo_lora_adapter),
    StandIn("my-dalle", _token("my-dalle"), lambda world: tiny_pipeline_folder(world, "my-dalle")),
]

# What a snippet writes (so that no stand-in is made for it, and it is checked afterwards).
_OUTPUT_PATTERNS = [
    r"--output[-_]dir[ =]+[\"']?([\w./$-]+)",
    r"save_pretrained\(\s*[\"']([^\"']+)[\"']",
    r"\.save\(\s*[\"']([^\"']+)[\"']",
]
_SHELL_OUTPUT_PATTERNS = [r"(?<![-0-9&>])>\s*([\w./-]+)"]  # a redirection into a file


def outputs_of(text: str, language: str = "python") -> list[str]:
    """The paths a snippet says it writes (relative to its working folder), in order, without duplicates."""
    found = []
    patterns = _OUTPUT_PATTERNS + (_SHELL_OUTPUT_PATTERNS if language in ("bash", "sh", "shell") else [])
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            path = match.group(1).rstrip("/")
            if "$" not in path and path not in found and not path.startswith("/dev/"):
                found.append(path)
    return found


def stand_ins_for(text: str, language: str = "python") -> list[StandIn]:
    written = set(outputs_of(text, language))
    return [s for s in STAND_INS if re.search(s.trigger, text) and s.name not in written]


def prepare(text: str, world: World, language: str = "python") -> list[str]:
    """Make the stand-ins `text` needs in `world`; returns their names."""
    made = []
    for stand_in in stand_ins_for(text, language):
        stand_in.make(world)
        made.append(stand_in.name)
    return made


# ---------------------------------------------------------------------------------------------- checking outputs


def check_output(path: Path) -> None:
    """A file or folder a snippet promised: it exists and is what its name says (an image opens, JSON parses, a
    pipeline folder has the components its model_index.json lists, a folder is not empty)."""
    assert path.exists(), f"{path.name} was not written"
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        assert files, f"{path.name}/ is empty"
        for file in files:
            if file.suffix == ".json":
                json.loads(file.read_text(encoding="utf-8"))
            elif file.suffix.lower() in (".png", ".jpg", ".jpeg"):
                check_output(file)
        index = path / "model_index.json"
        if index.is_file():
            for name, value in json.loads(index.read_text()).items():
                if isinstance(value, list) and value[0] is not None:
                    assert (path / name).is_dir(), f"{path.name}/model_index.json lists {name} but {name}/ is missing"
        return
    assert path.stat().st_size > 0, f"{path.name} is empty"
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert min(image.size) > 0
    elif path.suffix == ".json":
        json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------------- running


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines left out."""
    commands, current = [], ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        commands.append(current.strip())
        current = ""
    if current:
        commands.append(current.strip())
    return commands


def run(command: list[str], folder: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_until_answered(command: str, folder: Path, env: dict, port: int, timeout: float = 300) -> str:
    """Start a server command in its own process group, wait until http://127.0.0.1:port/ answers 200, stop it.
    Returns the page."""
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"{command!r} exited with {process.returncode}:\n{process.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    if response.status == 200:
                        return response.read().decode("utf-8", "replace")
            except OSError:
                time.sleep(1)
        raise AssertionError(f"{command!r} did not answer on port {port} within {timeout} s")
    finally:
        stop_process_group(process)


def stop_process_group(process: subprocess.Popen) -> None:
    """Stop a process started with `start_new_session=True` and everything it started (its process group)."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass

"""
Convert DALL·E Mini / Mega as min-dalle ships them (its `models_root`, or the Hub repo `kuprel/min-dalle`) into a
`DallePipeline` folder: the transformer as a [`DalleBartForImageGeneration`] (sharded safetensors, with
min-dalle's sampling defaults in its generation config), BART's caption files as a [`DalleBartTokenizer`] with
min-dalle's ids, the VQGAN as a [`DalleVQGAN`] in [0, 1] pixels, and optionally a CLIP reranker.

min-dalle's files are plain state dicts, read with `torch.load(weights_only=True, mmap=True)`: `encoder.pt` and
`decoder.pt` hold exactly the tensors of [`DalleBartForImageGeneration`] under its names (the model's parameter names
are min-dalle's; `decoder.pt` also holds the head, `lm_head.weight`), so each tensor is written as a view of the
memory-mapped file, one safetensors shard at a time: converting Mega (about 2.6B parameters) needs little more memory
than one shard. Sizes come from the tensor shapes, the number of attention heads (which no shape shows) from the preset
(Mega 32, Mini 16) unless given. Every tensor is checked (names, shapes, dtype, NaN/inf) before anything is written.
min-dalle loads these files with `strict=False`; tensors of no use here are named in a warning and left out.

`vqgan/detoker.pt` is the decoder side only of dalle-mini's VQGAN (`vqgan_imagenet_f16_16384`, taming-transformers'
layout). With it alone the converted VQGAN decodes but cannot encode images; its encoder comes from dalle-mini's Flax
checkpoint of that VQGAN (`flax_model.msgpack`, read here without JAX: flax writes a msgpack map whose arrays are
msgpack extension values holding `(shape, dtype name, bytes)`) or from a taming-transformers checkpoint + YAML. That
VQGAN works in [0, 1] pixels (dalle-mini encodes images in [0, 1]; min-dalle clips the decoder's output to [0, 1]), so
the converted one has `pixel_range="[0, 1]"` whatever its source.

min-dalle's decoder GroupNorms use PyTorch's default epsilon (1e-5); the VQGAN was trained with taming's 1e-6, which
the converted decoder keeps (diffusers' `VQModel`): decoded pixels differ from min-dalle's by about 1e-5 or less (the
parity tests measure it).
"""

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from huggingface_hub import hf_hub_download
from transformers import GenerationConfig

from ..hub_utils import path_for_card, sha256_of
from ..io_utils import write_folder_atomically
from ..loading_utils import load_complete_model
from ..models.dalle_bart import DalleBartConfig, DalleBartForImageGeneration
from ..models.dalle_vqgan import DalleVQGAN, DalleVQGANConfig
from ..pipelines import DallePipeline
from ..tokenization_dalle_bart import DalleBartTokenizer
from ..version import __version__
from .checkpoints import check_state_dict, load_torch_checkpoint_state_dict
from .convert_rudalle import save_sharded_safetensors
from .convert_rudalle_vqgan import convert_sber_vqgan, taming_to_dalle_vqgan_state_dict


logger = logging.getLogger(__name__)

MIN_DALLE_HUB_REPO = "kuprel/min-dalle"
# The decoder's start token (see DalleBartConfig.decoder_start_token_id): min-dalle's 2**14 - 1, the last VQGAN code,
# or dalle-mini's `image_vocab_size` (2**14), the row after the codes, which the models were trained with.
DECODER_STARTS = ("min-dalle", "dalle-mini")
# min-dalle's sampling defaults (`generate_raw_image_stream`): top-k 256, temperature 1, super-conditioning 16.
MIN_DALLE_TOP_K = 256
MIN_DALLE_GUIDANCE_SCALE = 16.0


@dataclass(frozen=True)
class MinDalleModel:
    """One of the models min-dalle runs: its folder in `models_root`, the suffix of its files on the Hub, its heads."""

    display_name: str
    folder: str
    hub_suffix: str
    num_attention_heads: int


MIN_DALLE_MODELS = {
    "mega": MinDalleModel("DALL·E Mega", "dalle_bart_mega", "", 32),
    "mini": MinDalleModel("DALL·E Mini", "dalle_bart_mini", "_mini", 16),
}
MIN_DALLE_FILES = ("encoder", "decoder", "vocab", "merges", "detoker")


def min_dalle_files(
    model_name: str, min_dalle_dir: str | os.PathLike | None = None, from_hub: bool = False
) -> dict[str, Path]:
    """
    The paths of a model's files (`encoder`, `decoder`, `vocab`, `merges`, `detoker`): in min-dalle's `models_root`
    layout under `min_dalle_dir` (`dalle_bart_mega/encoder.pt, decoder.pt, vocab.json, merges.txt`,
    `vqgan/detoker.pt`), or downloaded from the Hub repo `kuprel/min-dalle` (`from_hub`; Mini's files there end in
    `_mini`). Raises `FileNotFoundError` naming every missing file.
    """
    if model_name not in MIN_DALLE_MODELS:
        raise ValueError(f"Unknown model {model_name!r}; min-dalle runs {list(MIN_DALLE_MODELS)}.")
    if (min_dalle_dir is None) == (not from_hub):
        raise ValueError("Give min-dalle's models_root folder (`min_dalle_dir`) or `from_hub=True`, not both.")
    model = MIN_DALLE_MODELS[model_name]
    if from_hub:
        suffix = model.hub_suffix
        names = {
            "encoder": f"encoder{suffix}.pt",
            "decoder": f"decoder{suffix}.pt",
            "vocab": f"vocab{suffix}.json",
            "merges": f"merges{suffix}.txt",
            "detoker": "detoker.pt",
        }
        return {kind: Path(hf_hub_download(MIN_DALLE_HUB_REPO, name)) for kind, name in names.items()}
    root = Path(min_dalle_dir)
    paths = {
        "encoder": root / model.folder / "encoder.pt",
        "decoder": root / model.folder / "decoder.pt",
        "vocab": root / model.folder / "vocab.json",
        "merges": root / model.folder / "merges.txt",
        "detoker": root / "vqgan" / "detoker.pt",
    }
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"min-dalle's files for {model_name} are missing: {missing}. Expected its models_root layout: "
            f"{model.folder}/encoder.pt, decoder.pt, vocab.json, merges.txt and vqgan/detoker.pt."
        )
    return paths


def _shape(state_dict: dict[str, torch.Tensor], key: str, source: str) -> tuple[int, ...]:
    if key not in state_dict:
        raise ValueError(f"{source} has no tensor {key!r}: not a min-dalle state dict of this kind.")
    return tuple(state_dict[key].shape)


def _layer_count(state_dict: dict[str, torch.Tensor]) -> int:
    numbers = {int(match[1]) for key in state_dict if (match := re.match(r"layers\.(\d+)\.", key))}
    return max(numbers) + 1 if numbers else 0


def image_grid_size_of(decoder: dict[str, torch.Tensor]) -> int:
    """Codes per side of min-dalle's decoder state dict: the square root of its positions."""
    image_seq_length = _shape(decoder, "embed_positions.weight", "decoder.pt")[0]
    grid = math.isqrt(image_seq_length)
    if grid * grid != image_seq_length:
        raise ValueError(
            f"decoder.pt: embed_positions.weight has {image_seq_length} positions, not a square grid of codes."
        )
    return grid


def dalle_bart_config_from_state_dicts(
    encoder: dict[str, torch.Tensor],
    decoder: dict[str, torch.Tensor],
    num_attention_heads: int,
    image_vocab_size: int = 2**14,
    decoder_start: str = "min-dalle",
) -> DalleBartConfig:
    """The [`DalleBartConfig`] of min-dalle's encoder and decoder state dicts, sizes read from their shapes;
    `decoder_start`: `"min-dalle"` (the last code, `image_vocab_size - 1`) or `"dalle-mini"` (`image_vocab_size`)."""
    if decoder_start not in DECODER_STARTS:
        raise ValueError(f"`decoder_start` must be one of {list(DECODER_STARTS)}, got {decoder_start!r}.")
    text_vocab_size, hidden_size = _shape(encoder, "embed_tokens.weight", "encoder.pt")
    max_text_length = _shape(encoder, "embed_positions.weight", "encoder.pt")[0]
    intermediate_size = _shape(encoder, "layers.0.glu.fc0.weight", "encoder.pt")[0]
    decoder_vocab_size = _shape(decoder, "embed_tokens.weight", "decoder.pt")[0]
    grid = image_grid_size_of(decoder)
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"The model's width {hidden_size} is not a multiple of num_attention_heads={num_attention_heads}: pass "
            "the number of heads of these files (--num_attention_heads)."
        )
    return DalleBartConfig(
        text_vocab_size=text_vocab_size,
        image_vocab_size=image_vocab_size,
        decoder_vocab_size=decoder_vocab_size,
        max_text_length=max_text_length,
        image_grid_size=grid,
        hidden_size=hidden_size,
        encoder_layers=_layer_count(encoder),
        decoder_layers=_layer_count(decoder),
        num_attention_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        decoder_start_token_id=image_vocab_size - 1 if decoder_start == "min-dalle" else image_vocab_size,
    )


def min_dalle_location(name: str) -> tuple[str, str]:
    """Where a [`DalleBartForImageGeneration`] parameter lies in min-dalle's files: `(file, key)`."""
    if name == "lm_head.weight":
        return "decoder.pt", name
    part, key = name.removeprefix("model.").split(".", 1)
    return f"{part}.pt", key


def dalle_bart_tensors(
    encoder: dict[str, torch.Tensor], decoder: dict[str, torch.Tensor], config: DalleBartConfig
) -> dict[str, torch.Tensor]:
    """
    The converted model's state dict, views of min-dalle's (memory-mapped) tensors: `encoder.pt`'s under
    `model.encoder.`, `decoder.pt`'s under `model.decoder.` (its head as `lm_head.weight`). Each file is checked first
    against the model of `config` ([`check_state_dict`]: every tensor present, of its shape, floating-point and
    finite); tensors of no use are left out with a warning (min-dalle loads these files with `strict=False`).
    """
    with torch.device("meta"):
        expected = DalleBartForImageGeneration(config).state_dict()
    files = {"encoder.pt": encoder, "decoder.pt": decoder}
    locations = {name: min_dalle_location(name) for name in expected}
    model = f"a {config.encoder_layers} + {config.decoder_layers} layer model read from the tensors' shapes"
    for source, state_dict in files.items():
        shapes = {key: tuple(expected[name].shape) for name, (file, key) in locations.items() if file == source}
        check_state_dict(state_dict, shapes, source, model, ignore_unexpected=True)
    unused = sorted({(s, k) for s, state_dict in files.items() for k in state_dict} - set(locations.values()))
    if unused:
        logger.warning("Tensors of min-dalle's files that the model has no place for, left out: %s", unused)
    return {name: files[source][key] for name, (source, key) in locations.items()}


# ------------------------------------------------------------------------------------------------------ the VQGAN


def read_flax_msgpack(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """
    The arrays of a Flax checkpoint (`flax.serialization.to_bytes`, e.g. a `flax_model.msgpack`), by their path in
    the parameter tree joined with "/", read with `msgpack` alone: flax writes a nested msgpack map whose arrays are
    extension values (code 1, and 3 for numpy scalars) holding the msgpack triple `(shape, dtype name, C-order bytes)`,
    and splits arrays above 1 GiB into chunk maps (`__msgpack_chunked_array__`).
    """
    try:
        import msgpack
    except ImportError:
        raise ImportError("Reading a Flax checkpoint needs `msgpack`: `pip install msgpack`.") from None

    def ndarray(data: bytes) -> np.ndarray:
        shape, dtype_name, buffer = msgpack.unpackb(data, raw=True)
        return np.frombuffer(buffer, dtype=np.dtype(dtype_name.decode())).reshape(shape)

    def ext_hook(code: int, data: bytes):
        if code in (1, 3):  # flax's _MsgpackExtType.ndarray, npscalar
            return ndarray(data)
        raise ValueError(f"{os.fspath(path)!r}: unknown msgpack extension type {code} (not a Flax checkpoint).")

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Flax checkpoint not found: {path!r}.")
    try:
        with open(path, "rb") as file:
            tree = msgpack.unpackb(file.read(), ext_hook=ext_hook, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as error:
        raise ValueError(f"{path!r} is not a Flax msgpack checkpoint: {error}") from None
    if not isinstance(tree, dict):
        raise ValueError(f"{path!r} is not a Flax checkpoint: it holds a {type(tree).__name__}, not a parameter tree.")
    arrays = {}

    def flatten(node, prefix: str) -> None:
        if isinstance(node, dict) and node.get("__msgpack_chunked_array__"):
            chunks = node["chunks"]
            shape = tuple(node["shape"][str(i)] for i in range(len(node["shape"])))
            arrays[prefix] = np.concatenate([chunks[str(i)] for i in range(len(chunks))]).reshape(shape)
        elif isinstance(node, dict):
            for key, child in node.items():
                flatten(child, f"{prefix}/{key}" if prefix else key)
        elif isinstance(node, np.ndarray):
            arrays[prefix] = node
        else:
            raise ValueError(f"{path!r}: {prefix!r} is a {type(node).__name__}, not an array.")

    flatten(tree, "")
    return arrays


def flax_vqgan_to_taming_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """
    dalle-mini's Flax VQGAN (vqgan-jax's `VQModel`, converted from taming-transformers by renaming `down.0` to
    `down_0` etc.) as taming's state dict: `a/down_0/block_1/conv1/kernel` -> `a.down.0.block.1.conv1.weight` (the
    middle block keeps taming's own `block_1`, `attn_1`, `block_2`), Flax kernels `[h, w, in, out]` -> PyTorch
    `[out, in, h, w]`, GroupNorm `scale` -> `weight`, the codebook `quantize/embedding/embedding` ->
    `quantize.embedding.weight`.
    """
    state_dict = {}
    for path, array in arrays.items():
        parts = path.split("/")
        if parts[:1] == ["params"]:  # a checkpoint saved with its "params" collection
            parts = parts[1:]
        if parts == ["quantize", "embedding", "embedding"]:
            state_dict["quantize.embedding.weight"] = torch.from_numpy(array.copy())
            continue
        names = []
        for index, part in enumerate(parts):
            match = re.fullmatch(r"(down|up|block|attn)_(\d+)", part)
            in_middle = index > 0 and parts[index - 1] == "mid"
            names.extend([match[1], match[2]] if match and not in_middle else [part])
        *module, leaf = names
        tensor = torch.from_numpy(array.copy())
        if leaf == "kernel":
            leaf, tensor = "weight", tensor.permute(3, 2, 0, 1).contiguous()
        elif leaf == "scale":
            leaf = "weight"
        state_dict[".".join([*module, leaf])] = tensor
    return state_dict


def vqgan_config_from_taming_state_dict(state_dict: dict[str, torch.Tensor], latent_size: int) -> DalleVQGANConfig:
    """The [`DalleVQGANConfig`] (nearest codes, [0, 1] pixels) of a taming-layout VQGAN state dict, from its shapes:
    the decoder's levels, widths, blocks and attention levels; `has_encoder` if it holds `encoder.*` tensors. The image
    side (which no shape shows) is `latent_size` codes times the decoder's upsampling."""
    source = "The VQGAN"
    vocab_size, embed_dim = _shape(state_dict, "quantize.embedding.weight", source)
    levels = {int(match[1]) for key in state_dict if (match := re.match(r"decoder\.up\.(\d+)\.", key))}
    if not levels:
        raise ValueError("The VQGAN has no decoder levels (`decoder.up.N.*` tensors): not a taming-layout VQGAN.")
    num_levels = max(levels) + 1
    blocks = {int(match[1]) for key in state_dict if (match := re.match(r"decoder\.up\.0\.block\.(\d+)\.", key))}
    image_size = latent_size * 2 ** (num_levels - 1)
    return DalleVQGANConfig(
        vocab_size=vocab_size,
        embed_dim=embed_dim,
        latent_channels=_shape(state_dict, "post_quant_conv.weight", source)[0],
        block_out_channels=[
            _shape(state_dict, f"decoder.up.{level}.block.0.conv2.weight", source)[0] for level in range(num_levels)
        ],
        layers_per_block=len(blocks) - 1,
        attention_resolutions=[
            image_size // 2**level
            for level in range(num_levels)
            if any(key.startswith(f"decoder.up.{level}.attn.") for key in state_dict)
        ],
        num_channels=_shape(state_dict, "decoder.conv_out.weight", source)[0],
        image_size=image_size,
        quantizer="nearest",
        pixel_range="[0, 1]",
        has_encoder=any(key.startswith("encoder.") for key in state_dict),
    )


def dalle_vqgan_from_taming_state_dict(
    state_dict: dict[str, torch.Tensor], latent_size: int, source: str
) -> DalleVQGAN:
    """A [`DalleVQGAN`] holding a taming-layout state dict (decoder-only or whole), every tensor checked."""
    config = vqgan_config_from_taming_state_dict(state_dict, latent_size)
    with torch.device("meta"):
        model = DalleVQGAN(config)
    model.load_state_dict(taming_to_dalle_vqgan_state_dict(state_dict, model, source), assign=True)
    return model.float().eval()


def convert_min_dalle_vqgan(
    detoker: str | os.PathLike | None = None,
    latent_size: int = 16,
    flax_checkpoint: str | os.PathLike | None = None,
    taming_checkpoint: str | os.PathLike | None = None,
    taming_config: str | os.PathLike | None = None,
) -> DalleVQGAN:
    """
    DALL·E Mini / Mega's VQGAN as a [`DalleVQGAN`] (`pixel_range="[0, 1]"`, nearest codes): the whole VQGAN from
    dalle-mini's Flax checkpoint (`flax_checkpoint`) or a taming-transformers checkpoint + YAML, else the decoder
    alone from min-dalle's `detoker.pt` (`has_encoder=False`). With both, the whole VQGAN must have detoker.pt's
    codebook: it is then the VQGAN the transformer was trained with. `latent_size`: codes per side (the transformer's
    grid, 16), which fixes the image side of a VQGAN read from tensors alone.
    """
    if (taming_checkpoint is None) != (taming_config is None):
        raise ValueError("A taming VQGAN needs both its checkpoint (last.ckpt) and its YAML config (model.yaml).")
    if flax_checkpoint is not None and taming_checkpoint is not None:
        raise ValueError("Give one whole VQGAN: a Flax checkpoint or a taming checkpoint, not both.")
    decoder_only = None
    if detoker is not None:
        state_dict = load_torch_checkpoint_state_dict(detoker)
        # min-dalle's VQGanDetokenizer names the codebook `embedding`; taming's VectorQuantizer `quantize.embedding`.
        state_dict = {
            ("quantize." + key if key == "embedding.weight" else key): value for key, value in state_dict.items()
        }
        decoder_only = dalle_vqgan_from_taming_state_dict(state_dict, latent_size, os.path.basename(detoker))
    if flax_checkpoint is not None:
        state_dict = flax_vqgan_to_taming_state_dict(read_flax_msgpack(flax_checkpoint))
        vqgan = dalle_vqgan_from_taming_state_dict(state_dict, latent_size, os.path.basename(flax_checkpoint))
    elif taming_checkpoint is not None:
        vqgan = convert_sber_vqgan(taming_checkpoint, taming_config)
        vqgan.config.pixel_range = "[0, 1]"  # dalle-mini's VQGAN: see the module docstring
    elif decoder_only is not None:
        return decoder_only
    else:
        raise ValueError("No VQGAN given: min-dalle's detoker.pt, a Flax checkpoint or a taming checkpoint.")
    if decoder_only is not None:
        ours = vqgan.vqgan.quantize.embedding.weight
        theirs = decoder_only.vqgan.quantize.embedding.weight
        if ours.shape != theirs.shape or (ours - theirs).abs().max() > 1e-3 * theirs.abs().max():
            raise ValueError(
                "The VQGAN given has another codebook than min-dalle's detoker.pt: it is not the VQGAN that DALL·E "
                "Mini / Mega were trained with (dalle-mini's vqgan_imagenet_f16_16384)."
            )
    if not vqgan.config.has_encoder:
        raise ValueError("The VQGAN checkpoint given has no encoder (`encoder.*` tensors).")
    return vqgan


# ------------------------------------------------------------------------------------------------------ the folder


def min_dalle_generation_config(config: DalleBartConfig) -> GenerationConfig:
    """min-dalle's sampling defaults: top-k 256, temperature 1, super-conditioning (guidance) 16, all the codes."""
    return GenerationConfig(
        do_sample=True,
        top_k=MIN_DALLE_TOP_K,
        guidance_scale=MIN_DALLE_GUIDANCE_SCALE,
        max_new_tokens=config.image_seq_length,
        decoder_start_token_id=config.decoder_start_token_id,
    )


def convert_dalle_mega(
    output_dir: str | os.PathLike,
    model_name: str = "mega",
    min_dalle_dir: str | os.PathLike | None = None,
    from_hub: bool = False,
    num_attention_heads: int | None = None,
    vqgan_flax_checkpoint: str | os.PathLike | None = None,
    vqgan_checkpoint: str | os.PathLike | None = None,
    vqgan_config: str | os.PathLike | None = None,
    clip_model: str | os.PathLike | None = None,
    decoder_start: str = "min-dalle",
    max_shard_bytes: int = 500 * 2**20,
) -> DalleBartConfig:
    """
    Convert min-dalle's DALL·E Mega (`model_name="mega"`) or Mini (`"mini"`) into `output_dir`, a complete
    [`DallePipeline`] folder: `transformer/` ([`DalleBartForImageGeneration`], safetensors shards of at most
    `max_shard_bytes` in the files' dtype, min-dalle's sampling defaults in `generation_config.json`), `tokenizer/`
    ([`DalleBartTokenizer`]), `vae/` ([`DalleVQGAN`]), with `clip_model` (a folder or Hub id of a transformers
    `CLIPModel` + `CLIPProcessor`) `clip_model/` and `clip_processor/`, and `model_index.json` written by the pipeline
    itself (guidance scale 16 by default). Returns the transformer's config. `scripts/convert_dalle_mega.py` adds the
    model card ([`dalle_mega_card_values`]).

    Args:
        min_dalle_dir / from_hub: min-dalle's `models_root` folder, or download `kuprel/min-dalle`'s files.
        num_attention_heads: the heads (no tensor shape shows them); default: the preset's (Mega 32, Mini 16).
        vqgan_flax_checkpoint: dalle-mini's `vqgan_imagenet_f16_16384/flax_model.msgpack`, the whole VQGAN (with the
            encoder that priming and fine-tuning need); or `vqgan_checkpoint` + `vqgan_config`, the same VQGAN as a
            taming-transformers checkpoint and YAML. Without either, `vae/` decodes only (min-dalle's detoker.pt).
        decoder_start: `"min-dalle"` (default: start from code 16383, so that the converted model draws min-dalle's
            images) or `"dalle-mini"` (start from 16384, the start token the models were trained with).

    Written through a temporary folder (nothing half-written is left) after every input has been read and checked.
    """
    paths = min_dalle_files(model_name, min_dalle_dir, from_hub)
    heads = num_attention_heads or MIN_DALLE_MODELS[model_name].num_attention_heads
    encoder = load_torch_checkpoint_state_dict(paths["encoder"])
    decoder = load_torch_checkpoint_state_dict(paths["decoder"])
    vqgan = convert_min_dalle_vqgan(
        paths["detoker"],
        latent_size=image_grid_size_of(decoder),
        flax_checkpoint=vqgan_flax_checkpoint,
        taming_checkpoint=vqgan_checkpoint,
        taming_config=vqgan_config,
    )
    # The codes the transformer samples are the VQGAN's.
    config = dalle_bart_config_from_state_dicts(encoder, decoder, heads, vqgan.config.vocab_size, decoder_start)
    if vqgan.config.latent_size != config.image_grid_size:
        raise ValueError(
            f"The VQGAN encodes {vqgan.config.image_size}x{vqgan.config.image_size} images into "
            f"{vqgan.config.latent_size}x{vqgan.config.latent_size} codes, the transformer writes "
            f"{config.image_grid_size}x{config.image_grid_size}: not a pair."
        )
    tensors = dalle_bart_tensors(encoder, decoder, config)
    config.dtype = tensors["lm_head.weight"].dtype
    tokenizer = DalleBartTokenizer.from_min_dalle_files(paths["vocab"], paths["merges"], config.max_text_length)
    if max(tokenizer.get_vocab().values()) >= config.text_vocab_size:
        raise ValueError(
            f"{paths['vocab'].name} has ids up to {max(tokenizer.get_vocab().values())}, but the encoder's table has "
            f"{config.text_vocab_size} rows: not the vocabulary of this model."
        )
    clip = (None, None)
    if clip_model is not None:
        from transformers import CLIPModel, CLIPProcessor

        clip = load_complete_model(CLIPModel.from_pretrained, clip_model), CLIPProcessor.from_pretrained(clip_model)

    def write(folder: Path) -> None:
        (folder / "transformer").mkdir()
        makers = {name: (lambda tensor=tensor: tensor.to(config.dtype)) for name, tensor in tensors.items()}
        sizes = {name: tensor.numel() * config.dtype.itemsize for name, tensor in tensors.items()}
        save_sharded_safetensors(iter(makers.items()), sizes, folder / "transformer", max_shard_bytes)
        config.save_pretrained(folder / "transformer")
        min_dalle_generation_config(config).save_pretrained(folder / "transformer")
        # The other components and model_index.json through the pipeline, around a transformer on the meta device.
        with init_empty_weights():
            transformer = DalleBartForImageGeneration(config)
        pipe = DallePipeline(tokenizer, transformer, vqgan, *clip, default_guidance_scale=MIN_DALLE_GUIDANCE_SCALE)
        for name in ("tokenizer", "vae", "clip_model", "clip_processor"):
            if getattr(pipe, name) is not None:
                getattr(pipe, name).save_pretrained(folder / name)
        pipe.save_config(folder)

    write_folder_atomically(output_dir, write)
    return config


def dalle_mega_card_values(
    config: DalleBartConfig,
    model_name: str,
    vqgan_has_encoder: bool,
    clip_model: str | os.PathLike | None,
    sources: list[str | os.PathLike],
    command: str | None = None,
) -> dict:
    """The values of the model card template `model_cards/dalle_mega.md` (for `write_card_and_push`) of a converted
    folder: what it holds, the architecture, and the conversion's provenance (the source files with their SHA-256,
    the command)."""
    with torch.device("meta"):
        num_parameters = DalleBartForImageGeneration(config).num_parameters()
    return {
        "model_name": f"{MIN_DALLE_MODELS[model_name].display_name} (hf_dalle)",
        "display_name": MIN_DALLE_MODELS[model_name].display_name,
        "config": config,
        "num_parameters": num_parameters,
        "dtype": str(config.dtype).removeprefix("torch."),
        "vqgan_has_encoder": vqgan_has_encoder,
        "clip_model": path_for_card(clip_model),
        "top_k": MIN_DALLE_TOP_K,
        "guidance_scale": MIN_DALLE_GUIDANCE_SCALE,
        "min_dalle_start": config.decoder_start_token_id == config.image_vocab_size - 1,
        "sources": [{"name": Path(path).name, "sha256": sha256_of(path)} for path in sources],
        "hf_dalle_version": __version__,
        "command": command,
    }


__all__ = [
    "DECODER_STARTS",
    "MIN_DALLE_GUIDANCE_SCALE",
    "MIN_DALLE_HUB_REPO",
    "MIN_DALLE_MODELS",
    "MIN_DALLE_TOP_K",
    "MinDalleModel",
    "convert_dalle_mega",
    "convert_min_dalle_vqgan",
    "dalle_bart_config_from_state_dicts",
    "dalle_bart_tensors",
    "dalle_mega_card_values",
    "flax_vqgan_to_taming_state_dict",
    "image_grid_size_of",
    "min_dalle_files",
    "min_dalle_generation_config",
    "min_dalle_location",
    "read_flax_msgpack",
    "vqgan_config_from_taming_state_dict",
]

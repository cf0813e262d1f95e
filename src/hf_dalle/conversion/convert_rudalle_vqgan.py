"""Convert taming-transformers VQGANs, above all ruDALL-E's Sber VQGAN, into a [`DalleVQGAN`].

ruDALL-E ships `vqgan.gumbelf8-sber.config.yml` (taming's model config) with two checkpoints:
`vqgan.gumbelf8-sber.model.ckpt`, a PyTorch Lightning checkpoint of taming's `GumbelVQ` whose `state_dict` also holds
the LPIPS / discriminator weights of its loss (`loss.*`, not needed to encode or decode), and
`vqgan.gumbelf8-sber-dwt.model.ckpt`, the state dict of ruDALL-E's `VQGanGumbelVAE(dwt=True)` (keys under `model.`,
its decoder predicting Haar wavelet coefficients). Both are read with `torch.load(weights_only=True)` from a memory
map, so only the tensors that are used are read from disk and no code in the file can run.

The key map is the one of diffusers' `scripts/convert_vq_diffusion_to_diffusers.py` (taming's `down.{i}.block.{j}`
is `VQModel`'s `down_blocks.{i}.resnets.{j}`, decoder levels in reverse order, attention 1x1 convolutions as linear
layers), plus `quantize.proj` -> `gumbel_projection` for the Gumbel quantizer.
"""

import os
import re

import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData

from ..hub_utils import render_model_card, sha256_of
from ..models.dalle_vqgan import DalleVQGAN, DalleVQGANConfig
from ..version import __version__
from .checkpoints import check_state_dict, load_torch_checkpoint_state_dict


# taming's model classes (the config's `model.target`) -> DalleVQGANConfig.quantizer
TAMING_QUANTIZERS = {"taming.models.vqgan.GumbelVQ": "gumbel", "taming.models.vqgan.VQModel": "nearest"}

RESNET_NAMES = {"nin_shortcut": "conv_shortcut"}
ATTENTION_NAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


# What `vqgan_config_from_taming` reads: taming's `model.params` and its `ddconfig`.
TAMING_PARAMS = ("n_embed", "embed_dim", "ddconfig")
TAMING_DDCONFIG = (
    "z_channels",
    "ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "in_channels",
    "out_ch",
    "resolution",
)


def vqgan_config_from_taming(
    taming_config: dict,
    wavelet_decoder: bool = False,
    source: str = "The taming config",
    state_dict: dict[str, torch.Tensor] | None = None,
) -> DalleVQGANConfig:
    """A [`DalleVQGANConfig`] from taming's model config (the parsed YAML, e.g. `vqgan.gumbelf8-sber.config.yml`);
    `source` names the file in errors. With the checkpoint's `state_dict`, the levels and residual blocks the config
    asks for are bounded by those it holds ([`check_taming_layout`]) before anything is built from them."""
    try:
        model = taming_config["model"]
        params, target = model["params"], model["target"]
        ddconfig = params["ddconfig"]
    except (KeyError, TypeError):
        raise ValueError(
            f"{source} is not a taming-transformers model config: expected `model.target` and `model.params.ddconfig`."
        ) from None
    if target not in TAMING_QUANTIZERS:
        raise ValueError(f"{source}: unsupported taming model {target!r}; supported: {sorted(TAMING_QUANTIZERS)}.")
    missing = [f"model.params.{key}" for key in TAMING_PARAMS if key not in params]
    missing += [f"model.params.ddconfig.{key}" for key in TAMING_DDCONFIG if key not in ddconfig]
    if missing:
        raise ValueError(f"{source} is not a complete taming VQGAN config: it lacks {missing}.")

    def positive(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0

    sizes = {key: params[key] for key in ("n_embed", "embed_dim")}
    sizes |= {
        key: ddconfig[key] for key in ("z_channels", "ch", "num_res_blocks", "in_channels", "out_ch", "resolution")
    }
    wrong = [f"{key}={value!r}" for key, value in sizes.items() if not positive(value)]
    for key in ("ch_mult", "attn_resolutions"):
        if not isinstance(ddconfig[key], list) or not all(positive(v) for v in ddconfig[key]):
            wrong.append(f"{key}={ddconfig[key]!r}")
    if wrong or not ddconfig["ch_mult"]:
        raise ValueError(
            f"{source}: the sizes must be positive integers (ch_mult and attn_resolutions lists of them, ch_mult not "
            f"empty), got {', '.join(wrong) or 'ch_mult=[]'}."
        )
    if ddconfig.get("double_z", False) or ddconfig["in_channels"] != ddconfig["out_ch"]:
        raise ValueError(
            f"{source}: unsupported ddconfig: a VQGAN needs `double_z: false` and as many output as input channels, "
            f"got double_z={ddconfig.get('double_z')}, in_channels={ddconfig['in_channels']}, "
            f"out_ch={ddconfig['out_ch']}."
        )
    if state_dict is not None:
        check_taming_layout(ddconfig, state_dict, source)
    return DalleVQGANConfig(
        vocab_size=params["n_embed"],
        embed_dim=params["embed_dim"],
        latent_channels=ddconfig["z_channels"],
        block_out_channels=[ddconfig["ch"] * mult for mult in ddconfig["ch_mult"]],
        layers_per_block=ddconfig["num_res_blocks"],
        attention_resolutions=list(ddconfig["attn_resolutions"]),
        num_channels=ddconfig["in_channels"],
        image_size=ddconfig["resolution"],
        quantizer=TAMING_QUANTIZERS[target],
        wavelet_decoder=wavelet_decoder,
    )


def check_taming_layout(ddconfig: dict, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Refuse a taming `ddconfig` (checked sizes) that asks for more levels or residual blocks than the checkpoint's
    tensors hold, before a model of that size is built: a few bytes of YAML must not make the converter build
    millions of modules. `source` names the config."""
    found = [re.search(r"(?:^|\.)(?:down|up)\.(\d+)\.block\.(\d+)\.", key) for key in state_dict]
    levels = max((int(match[1]) + 1 for match in found if match), default=0)
    blocks = max((int(match[2]) + 1 for match in found if match), default=0)  # the decoder's: layers_per_block + 1
    if len(ddconfig["ch_mult"]) > levels or ddconfig["num_res_blocks"] >= blocks:
        raise ValueError(
            f"{source} asks for {len(ddconfig['ch_mult'])} levels of {ddconfig['num_res_blocks']} residual blocks, "
            f"but the checkpoint holds {levels} levels of at most {max(blocks - 1, 0)} (+1 in the decoder): not the "
            "config of this checkpoint."
        )


def _rename_block(rest: str, names: dict[str, str]) -> str:
    layer, _, parameter = rest.partition(".")
    return f"{names.get(layer, layer)}.{parameter}"


def _diffusers_name(key: str, num_levels: int) -> str | None:
    """The `DalleVQGAN` parameter that taming's `key` is, or `None` for a key that has none."""
    if key in ("quantize.embed.weight", "quantize.embedding.weight"):  # GumbelQuantize, VectorQuantizer
        return "vqgan.quantize.embedding.weight"
    if key.startswith("quantize.proj."):
        return "gumbel_projection." + key.removeprefix("quantize.proj.")
    if key.startswith(("quant_conv.", "post_quant_conv.")):
        return "vqgan." + key
    part, _, rest = key.partition(".")
    if part not in ("encoder", "decoder"):
        return None
    prefix = f"vqgan.{part}."
    if rest.startswith(("conv_in.", "conv_out.")):
        return prefix + rest
    if rest.startswith("norm_out."):
        return prefix + "conv_norm_out." + rest.removeprefix("norm_out.")
    if match := re.fullmatch(r"mid\.block_([12])\.(.+)", rest):
        return f"{prefix}mid_block.resnets.{int(match[1]) - 1}.{_rename_block(match[2], RESNET_NAMES)}"
    if match := re.fullmatch(r"mid\.attn_1\.(.+)", rest):
        return f"{prefix}mid_block.attentions.0.{_rename_block(match[1], ATTENTION_NAMES)}"
    if match := re.fullmatch(r"(down|up)\.(\d+)\.(block|attn|downsample|upsample)\.(.+)", rest):
        direction, level, kind, inner = match[1], int(match[2]), match[3], match[4]
        # taming numbers decoder levels from the lowest resolution up, VQModel in the order they run
        blocks = (
            f"{prefix}down_blocks.{level}" if direction == "down" else f"{prefix}up_blocks.{num_levels - 1 - level}"
        )
        if kind in ("downsample", "upsample"):
            return f"{blocks}.{kind}rs.0.{inner}"
        index, _, inner = inner.partition(".")
        if kind == "block":
            return f"{blocks}.resnets.{index}.{_rename_block(inner, RESNET_NAMES)}"
        return f"{blocks}.attentions.{index}.{_rename_block(inner, ATTENTION_NAMES)}"
    return None


def taming_to_dalle_vqgan_state_dict(
    state_dict: dict[str, torch.Tensor], model: DalleVQGAN, source: str = "The checkpoint"
) -> dict[str, torch.Tensor]:
    """
    Map a taming VQGAN state dict (`GumbelVQ` / `VQModel`, or ruDALL-E's `VQGanGumbelVAE` with keys under `model.`
    and, for `dwt=True`, the wavelet decoder under `decoder.decoder.`) onto `model`'s parameters, every tensor checked
    ([`check_state_dict`]: a key without a place, a parameter without a source, a wrong shape, NaN or inf raise, naming
    `source`). The loss's weights (`loss.*`) and the fixed Haar filters of the wavelet decoder are skipped.
    """
    if state_dict and all(key.startswith("model.") for key in state_dict):
        state_dict = {key.removeprefix("model."): value for key, value in state_dict.items()}
    has_wavelet_decoder = any(key.startswith("decoder.decoder.") for key in state_dict)
    if has_wavelet_decoder != model.config.wavelet_decoder:
        raise ValueError(
            f"{source} {'has' if has_wavelet_decoder else 'lacks'} ruDALL-E's wavelet decoder (`decoder.decoder.*`) "
            f"but the model was configured with wavelet_decoder={model.config.wavelet_decoder}."
        )
    if has_wavelet_decoder:
        # DecoderDWT holds the convolution that runs before the decoder; GumbelVQ's own `post_quant_conv` is unused.
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("post_quant_conv.")}
        state_dict = {
            key.removeprefix("decoder.")
            if key.startswith(("decoder.decoder.", "decoder.post_quant_conv."))
            else key: value
            for key, value in state_dict.items()
            if not key.startswith("decoder.idwt.")
        }
    targets = model.state_dict()
    num_levels = len(model.config.block_out_channels)
    converted = {}
    for key, value in state_dict.items():
        if key.startswith("loss."):
            continue
        name = _diffusers_name(key, num_levels)
        if name not in targets:
            converted[key] = value  # no place: check_state_dict names it, under its own name
            continue
        if value.ndim == 4 and value.shape[2:] == (1, 1) and targets[name].ndim == 2:
            value = value[:, :, 0, 0]  # attention's 1x1 convolutions are linear layers in diffusers
        converted[name] = value
    shapes = {name: tuple(target.shape) for name, target in targets.items()}
    check_state_dict(converted, shapes, source, "the configured VQGAN")
    return converted


def convert_sber_vqgan(
    checkpoint_path: str | os.PathLike, config_path: str | os.PathLike, torch_dtype: torch.dtype = torch.float32
) -> DalleVQGAN:
    """
    Convert ruDALL-E's Sber VQGAN (or another taming-transformers VQGAN) into a [`DalleVQGAN`].

    Args:
        checkpoint_path: `vqgan.gumbelf8-sber.model.ckpt` (Lightning checkpoint of taming's `GumbelVQ`) or
            `vqgan.gumbelf8-sber-dwt.model.ckpt` (ruDALL-E's wavelet variant, detected from its keys), or any taming
            VQGAN checkpoint / state dict.
        config_path: taming's YAML model config (`vqgan.gumbelf8-sber.config.yml`, in the `rudalle` package at
            `rudalle/vae/`).
        torch_dtype: dtype of the returned model.
    """
    state_dict = load_torch_checkpoint_state_dict(checkpoint_path)
    source = repr(os.fspath(checkpoint_path))
    try:
        with open(config_path, encoding="utf-8") as f:
            taming_config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"Cannot read the VQGAN config {os.fspath(config_path)!r}: {error}") from None
    wavelet_decoder = any(key.startswith(("decoder.decoder.", "model.decoder.decoder.")) for key in state_dict)
    config = vqgan_config_from_taming(taming_config, wavelet_decoder, repr(os.fspath(config_path)), state_dict)
    with torch.device("meta"):  # the config's sizes, checked against the tensors before any weight is allocated
        model = DalleVQGAN(config)
    model.load_state_dict(taming_to_dalle_vqgan_state_dict(state_dict, model, source), assign=True)
    return model.to(torch_dtype).eval()


def vqgan_model_card(
    model: DalleVQGAN,
    repo_id: str,
    sources: list[str | os.PathLike],
    origin: str = "ruDALL-E's Sber VQGAN (`shonenkov/rudalle-utils`)",
    command: str | None = None,
    license: str = "apache-2.0",
    model_name: str | None = None,
) -> ModelCard:
    """The model card (`model_cards/dalle_vqgan.md`) of a converted VQGAN: architecture, usage, and the conversion's
    provenance (the `sources` files with their SHA-256, the `command` that ran). ruDALL-E's weights are Apache 2.0."""
    wavelet = model.config.wavelet_decoder
    return render_model_card(
        "dalle_vqgan",
        ModelCardData(license=license, tags=["vqgan", "image-tokenizer", "rudalle", "dall-e"]),
        model_name=model_name or f"Sber VQGAN{' (wavelet decoder)' if wavelet else ''} for hf_dalle",
        repo_id=repo_id,
        config=model.config,
        num_parameters=model.num_parameters(),
        conversion={
            "origin": origin,
            "hf_dalle_version": __version__,
            "torch_version": torch.__version__,
            "sources": [{"name": os.path.basename(path), "sha256": sha256_of(path)} for path in sources],
            "command": command,
        },
    )


__all__ = [
    "TAMING_DDCONFIG",
    "TAMING_PARAMS",
    "check_taming_layout",
    "convert_sber_vqgan",
    "taming_to_dalle_vqgan_state_dict",
    "vqgan_config_from_taming",
    "vqgan_model_card",
]

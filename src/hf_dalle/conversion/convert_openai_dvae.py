"""Convert OpenAI's released dVAE (`encoder.pkl`, `decoder.pkl` of the `dall_e` package) into a [`DalleVAE`].

OpenAI's files are pickles of whole `dall_e` modules. Unpickling them normally imports `dall_e` and can run
arbitrary code, so they are read with `torch.load(weights_only=True)`: every class the pickles name is mapped to an
inert stand-in that only receives the pickled attributes (`_parameters`, `_modules`, ...). Nothing but tensors is
used, so neither `dall_e` nor the old `nn.Upsample` attributes (`recompute_scale_factor`) matter. Plain state dicts
of the same modules (`torch.save(encoder.state_dict())`) are accepted too.
"""

import os

import torch

from ..models.dalle_vae import DalleVAE, DalleVAEConfig
from .checkpoints import PickledModule, check_state_dict, pickled_module_tensors, safe_torch_load, stand_in


# Every class a `torch.save` of `dall_e.Encoder` / `dall_e.Decoder` refers to, besides the tensor machinery that
# `weights_only=True` allows by default (listed with `torch.serialization.get_unsafe_globals_in_checkpoint`).
OPENAI_DVAE_GLOBALS = (
    "dall_e.encoder.Encoder",
    "dall_e.encoder.EncoderBlock",
    "dall_e.decoder.Decoder",
    "dall_e.decoder.DecoderBlock",
    "dall_e.utils.Conv2d",
    "torch.nn.modules.container.Sequential",
    "torch.nn.modules.activation.ReLU",
    "torch.nn.modules.linear.Identity",
    "torch.nn.modules.pooling.MaxPool2d",
    "torch.nn.modules.upsampling.Upsample",
)

# `dall_e.utils.Conv2d` names its parameters `w` and `b`; ours are `nn.Conv2d`s.
OPENAI_PARAMETER_NAMES = {"w": "weight", "b": "bias"}

_STAND_INS = [stand_in(name) for name in OPENAI_DVAE_GLOBALS]


def load_openai_dvae_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """
    Read the tensors of an OpenAI dVAE encoder or decoder file without running code from it.

    Args:
        path: a `torch.save` of a whole `dall_e.Encoder` / `dall_e.Decoder` (OpenAI's `encoder.pkl` /
            `decoder.pkl`) or of its `state_dict()`.

    Returns:
        The tensors under OpenAI's names (`blocks.input.w`, `blocks.group_1.block_1.id_path.b`, ...), as stored
        (possibly non-contiguous).
    """
    path = os.fspath(path)
    checkpoint = safe_torch_load(
        path,
        _STAND_INS,
        "is not an OpenAI dVAE checkpoint: it contains objects that are not part of `dall_e`'s Encoder/Decoder",
    )
    if isinstance(checkpoint, PickledModule):
        state_dict = pickled_module_tensors(checkpoint)
    elif isinstance(checkpoint, dict) and all(
        isinstance(name, str) and isinstance(value, torch.Tensor) for name, value in checkpoint.items()
    ):
        state_dict = dict(checkpoint)
    else:
        raise ValueError(
            f"{path!r} is not an OpenAI dVAE checkpoint: expected a pickled `dall_e.Encoder`/`dall_e.Decoder` or "
            f"its state dict, got {type(checkpoint).__name__}."
        )
    if not isinstance(state_dict.get("blocks.input.w"), torch.Tensor) or state_dict["blocks.input.w"].ndim != 4:
        raise ValueError(
            f"{path!r} is not an OpenAI dVAE checkpoint: it has no `blocks.input.w` convolution weight "
            f"(found {sorted(state_dict)[:5]}{' ...' if len(state_dict) > 5 else ''})."
        )
    return state_dict


def _kind(state_dict: dict[str, torch.Tensor]) -> str:
    # The encoder opens with a 7x7 convolution of the pixels, the decoder with a 1x1 convolution of the codes.
    return "encoder" if state_dict["blocks.input.w"].shape[-1] == 7 else "decoder"


def _blocks_per_group(state_dict: dict[str, torch.Tensor]) -> int:
    return len({key.split(".")[2] for key in state_dict if key.startswith("blocks.group_1.block_")})


def _check_kind(path, state_dict: dict[str, torch.Tensor], expected_kind: str) -> None:
    kind = _kind(state_dict)
    if kind != expected_kind:
        raise ValueError(
            f"{path!r} holds a dVAE {kind}, but was given as the {expected_kind}: are the encoder and decoder "
            "files swapped?"
        )


def openai_dvae_config(
    encoder_state_dict: dict[str, torch.Tensor], decoder_state_dict: dict[str, torch.Tensor]
) -> DalleVAEConfig:
    """Infer the whole [`DalleVAEConfig`] from the shapes of OpenAI-named encoder and decoder tensors."""
    enc_input, enc_output = encoder_state_dict["blocks.input.w"], encoder_state_dict.get("blocks.output.conv.w")
    dec_input, dec_output = decoder_state_dict["blocks.input.w"], decoder_state_dict.get("blocks.output.conv.w")
    if enc_output is None or dec_output is None:
        raise ValueError("OpenAI dVAE checkpoint without `blocks.output.conv.w`: the file is incomplete.")
    encoder_sizes = {
        "vocab_size": enc_output.shape[0],
        "hidden_size": enc_input.shape[0],
        "num_blocks_per_group": _blocks_per_group(encoder_state_dict),
        "num_channels": enc_input.shape[1],
    }
    decoder_sizes = {
        "vocab_size": dec_input.shape[1],
        "hidden_size": dec_output.shape[1],
        "num_blocks_per_group": _blocks_per_group(decoder_state_dict),
        "num_channels": dec_output.shape[0] // 2,
    }
    for name, encoder_value in encoder_sizes.items():
        if encoder_value != decoder_sizes[name]:
            raise ValueError(
                f"The encoder and decoder do not belong together: `{name}` is {encoder_value} in the encoder but "
                f"{decoder_sizes[name]} in the decoder."
            )
    return DalleVAEConfig(**encoder_sizes, decoder_init_size=dec_input.shape[0])


def convert_openai_dvae(encoder_path: str | os.PathLike, decoder_path: str | os.PathLike) -> DalleVAE:
    """
    Load OpenAI's released dVAE (or any `dall_e` Encoder/Decoder pair) into a [`DalleVAE`], safely.

    Args:
        encoder_path: OpenAI's `encoder.pkl` (a pickled `dall_e.Encoder`) or a `torch.save` of its `state_dict()`.
        decoder_path: OpenAI's `decoder.pkl` (a pickled `dall_e.Decoder`) or a `torch.save` of its `state_dict()`.

    Returns:
        A float32 [`DalleVAE`] in eval mode whose config (widths, blocks per group, vocab, decoder init width,
        channels) is read from the tensor shapes; `save_pretrained` writes it as safetensors.

    Example:

    ```python
    >>> from hf_dalle import convert_openai_dvae
    >>> vae = convert_openai_dvae("encoder.pkl", "decoder.pkl")
    >>> vae.save_pretrained("dalle-vae-openai")
    ```
    """
    encoder_state_dict = load_openai_dvae_state_dict(encoder_path)
    decoder_state_dict = load_openai_dvae_state_dict(decoder_path)
    _check_kind(encoder_path, encoder_state_dict, "encoder")
    _check_kind(decoder_path, decoder_state_dict, "decoder")
    config = openai_dvae_config(encoder_state_dict, decoder_state_dict)

    # Built on the meta device and filled with `assign=True`: no time spent initialising weights we overwrite.
    with torch.device("meta"):
        vae = DalleVAE(config)
    expected = vae.state_dict()
    model = (
        f"the dVAE inferred from the files' shapes (hidden_size={config.hidden_size}, "
        f"num_blocks_per_group={config.num_blocks_per_group}, vocab_size={config.vocab_size})"
    )
    state_dict = {}
    for prefix, path, openai_state_dict in (
        ("encoder.", encoder_path, encoder_state_dict),
        ("decoder.", decoder_path, decoder_state_dict),
    ):
        renamed = {}
        for name, tensor in openai_state_dict.items():
            module, _, leaf = name.rpartition(".")
            renamed[f"{prefix}{module}.{OPENAI_PARAMETER_NAMES.get(leaf, leaf)}"] = tensor
        shapes = {name: tuple(tensor.shape) for name, tensor in expected.items() if name.startswith(prefix)}
        check_state_dict(renamed, shapes, repr(os.fspath(path)), model)
        # Some released tensors are non-contiguous views, which safetensors refuses to save.
        state_dict |= {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in renamed.items()}
    vae.load_state_dict(state_dict, assign=True)
    return vae.eval()


__all__ = ["convert_openai_dvae", "load_openai_dvae_state_dict", "openai_dvae_config"]

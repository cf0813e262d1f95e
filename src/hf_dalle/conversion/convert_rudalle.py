"""
Convert ruDALL-E's released models (Sber AI's `rudalle` package: Malevich, Malevich v2, Emojich, Surrealist XL,
Kandinsky) into [`DallePipeline`] folders: the transformer as a [`DalleForImageGeneration`], its caption tokenizer as a
[`DalleTokenizer`] with ruDALL-E's ids, and (through `convert_rudalle_vqgan` and `convert_ruclip`) its Sber VQGAN and
the ruCLIP reranker.

ruDALL-E's `DalleModel` is DALL-E's architecture with a few differences, each a [`DalleConfig`] option: tanh GELU
(`hidden_act="gelu_tanh"`), CogView's sandwich LayerNorm (`sandwich_layernorm`), a second LayerNorm before the head
(`head_layernorm`), a 2D convolutional window clipped at the image edges (v3) or wrapped on a torus (v2)
(`conv_window`), and v2's extra BOS before the caption, which its masks do not count (`max_text_length = 129`,
`image_mask_offset = 1`). Its layer pattern (layer `i`, 0-based, is column attention if `(i - 1) % 4 == 0`, the last
layer convolutional unless that rule made it a column layer, the rest row) is written out in `attention_types`.

Weights: its separate text (`vocab_size = 16384 + 128`) and image tables are concatenated into the stream vocabulary
(`text_vocab_size = vocab_size`, so image logits sit at the same offset as in ruDALL-E's head); a pad (id 0) at text
position `i` is embedded by ruDALL-E as token `vocab_size - text_seq_length + i` plus the position embedding, which
becomes `text_pad_embedding[i]`; the fused `[q|k|v]` projection is kept as it is. ruDALL-E's PB-relax (a per-head
constant subtracted before the softmax), its -10000 mask fill and its clamp of the attention output to +-65504 change
nothing in float32 and only round differently in float16, so they have no counterpart.

Checkpoints are read with `torch.load(weights_only=True, mmap=True)` and written tensor by tensor into safetensors
shards in their own dtype (float16 for the released files), so converting Kandinsky (23 GB) needs little more memory
than one shard.
"""

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file
from tokenizers import Regex, normalizers, processors
from transformers import GenerationConfig

from ..io_utils import write_folder_atomically
from ..models.dalle import DalleConfig, DalleForImageGeneration
from ..pipelines import DallePipeline
from ..tokenization_dalle import DalleTokenizer
from .checkpoints import check_state_dict, load_torch_checkpoint_state_dict
from .convert_ruclip import convert_ruclip
from .convert_rudalle_vqgan import convert_sber_vqgan
from .convert_yttm import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, convert_yttm_to_tokenizer, read_yttm_model


@dataclass(frozen=True)
class RudalleRelease:
    """One of ruDALL-E's released transformers, as its `rudalle.dalle.MODELS` lists it."""

    hf_version: str
    model_params: dict
    repo_id: str
    filename: str


_MALEVICH_PARAMS = {
    "num_layers": 24,
    "hidden_size": 2048,
    "num_attention_heads": 16,
    "embedding_dropout_prob": 0.1,
    "output_dropout_prob": 0.1,
    "attention_dropout_prob": 0.1,
    "image_tokens_per_dim": 32,
    "text_seq_length": 128,
    "cogview_sandwich_layernorm": True,
    "cogview_pb_relax": True,
    "vocab_size": 16384 + 128,
    "image_vocab_size": 8192,
}

RUDALLE_MODELS = {
    "Malevich": RudalleRelease("v3", _MALEVICH_PARAMS, "sberbank-ai/rudalle-Malevich", "pytorch_model_v3.bin"),
    "Malevich_v2": RudalleRelease("v2", _MALEVICH_PARAMS, "sberbank-ai/rudalle-Malevich", "pytorch_model_v2.bin"),
    "Emojich": RudalleRelease("v2", _MALEVICH_PARAMS, "sberbank-ai/rudalle-Emojich", "pytorch_model.bin"),
    "Surrealist_XL": RudalleRelease("v3", _MALEVICH_PARAMS, "shonenkov-AI/rudalle-xl-surrealist", "pytorch_model.bin"),
    "Kandinsky": RudalleRelease(
        "v3",
        {**_MALEVICH_PARAMS, "num_layers": 64, "hidden_size": 3840, "num_attention_heads": 60},
        "shonenkov-AI/Kandinsky",
        "pytorch_model.bin",
    ),
}

# ruDALL-E's caption tokenizer and VQGAN files (`rudalle.tokenizer.get_tokenizer`, `rudalle.vae.get_vae`).
RUDALLE_UTILS_REPO = "shonenkov/rudalle-utils"
RUDALLE_TOKENIZER_FILENAME = "bpe.model"
RUDALLE_VQGAN_FILENAMES = {False: "vqgan.gumbelf8-sber.model.ckpt", True: "vqgan.gumbelf8-sber-dwt.model.ckpt"}

# The prompt templates ruCLIP's `Predictor` averages its text embeddings over, which ruDALL-E reranks with.
RUCLIP_PROMPT_TEMPLATES = [
    "{}",
    "фото, на котором изображено {}",
    "изображение с {}",
    "картинка с {}",
    "фото с {}",
    "на фото видно {}",
]

# ruDALL-E's sampling defaults (its README and `generate_images` examples).
RUDALLE_TOP_K = 2048
RUDALLE_TOP_P = 0.995

# `model_params` of ruDALL-E's `DalleModel` (and `hf_version`): those the conversion needs, and those it accepts.
_REQUIRED_PARAMS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "text_seq_length",
    "image_tokens_per_dim",
    "vocab_size",
    "image_vocab_size",
)
_OPTIONAL_PARAMS = {
    "cogview_sandwich_layernorm": False,
    "cogview_pb_relax": False,  # no effect in float32 (see the module docstring)
    "loss_img_weight": 7,
    "mlp_activation": "gelu_jit",
    "is_bool_mask": True,
    "embedding_dropout_prob": 0.1,  # training only
    "attention_dropout_prob": 0.1,
    "output_dropout_prob": 0.1,
    "hf_version": "v3",
}
# Mask buffers that ruDALL-E's state dicts hold; the converted model builds its own masks from the config.
_MASK_BUFFERS = ("transformer.row_mask", "transformer.col_mask", "transformer.conv_mask")


def rudalle_attention_types(num_layers: int) -> list[str]:
    """ruDALL-E's layer pattern (`DalleTransformer._get_layer_mask`): layer `i` (0-based) is `"column"` if
    `(i - 1) % 4 == 0`, else `"row"`, except the last layer, which is `"conv"` unless it is a column layer."""
    types = []
    for i in range(num_layers):
        if (i - 1) % 4 == 0:
            types.append("column")
        else:
            types.append("row" if i != num_layers - 1 else "conv")
    return types


def rudalle_dalle_config(model_params: dict) -> DalleConfig:
    """
    The [`DalleConfig`] of a ruDALL-E transformer from its `model_params` (the keyword arguments of ruDALL-E's
    `DalleModel`, as `rudalle.dalle.MODELS` lists them) plus `"hf_version"` (`"v3"`, the default, or `"v2"`).
    """
    if not isinstance(model_params, dict):
        raise ValueError(f"The ruDALL-E config must be a JSON object (dict), got {type(model_params).__name__}.")
    missing = [key for key in _REQUIRED_PARAMS if key not in model_params]
    unknown = sorted(set(model_params) - set(_REQUIRED_PARAMS) - set(_OPTIONAL_PARAMS))
    if missing or unknown:
        raise ValueError(
            f"The ruDALL-E config {'lacks ' + str(missing) if missing else ''}"
            f"{' and ' if missing and unknown else ''}{'has unknown keys ' + str(unknown) if unknown else ''}: "
            f"expected ruDALL-E's `model_params` names {list(_REQUIRED_PARAMS)}, optionally "
            f"{list(_OPTIONAL_PARAMS)}."
        )
    params = {**_OPTIONAL_PARAMS, **model_params}
    not_positive = [
        f"{key}={params[key]!r}"
        for key in _REQUIRED_PARAMS
        if not isinstance(params[key], int) or isinstance(params[key], bool) or params[key] < 1
    ]
    if not_positive:
        raise ValueError(f"The ruDALL-E config's sizes must be positive integers, got {', '.join(not_positive)}.")
    if params["hf_version"] not in ("v2", "v3"):
        raise ValueError(f"`hf_version` must be 'v2' or 'v3', got {params['hf_version']!r}.")
    if params["mlp_activation"] not in ("gelu_jit", "gelu"):
        raise ValueError(f"`mlp_activation` must be 'gelu_jit' or 'gelu', got {params['mlp_activation']!r}.")
    text_length = params["text_seq_length"]
    if not params["vocab_size"] > text_length:
        raise ValueError(
            f"`vocab_size` ({params['vocab_size']}) must exceed `text_seq_length` ({text_length}): its last "
            "`text_seq_length` ids are ruDALL-E's per-position pad tokens."
        )
    v2 = params["hf_version"] == "v2"
    return DalleConfig(
        text_vocab_size=params["vocab_size"],
        image_vocab_size=params["image_vocab_size"],
        # v2 puts a BOS before the caption's own BOS (129 text positions) and builds its masks for 128.
        max_text_length=text_length + 1 if v2 else text_length,
        image_mask_offset=1 if v2 else 0,
        image_grid_size=params["image_tokens_per_dim"],
        hidden_size=params["hidden_size"],
        num_hidden_layers=params["num_layers"],
        num_attention_heads=params["num_attention_heads"],
        attention_types=rudalle_attention_types(params["num_layers"]),
        conv_kernel_size=11,
        conv_window="torus" if v2 else "clipped",
        hidden_act="gelu_tanh",
        sandwich_layernorm=bool(params["cogview_sandwich_layernorm"]),
        head_layernorm=True,
        text_loss_weight=1 / (params["loss_img_weight"] + 1),
        text_pad_token_id=0,
        layer_norm_eps=1e-5,
    )


def _layer_keys(layer: int, sandwich: bool) -> dict[str, str]:
    """hf_dalle name -> ruDALL-E name, for the tensors of one block."""
    names = {
        "attention_norm": "input_layernorm",
        "attention.qkv_proj": "attention.query_key_value",
        "attention.out_proj": "attention.dense",
        "mlp_norm": "post_attention_layernorm",
        "mlp.fc_in": "mlp.dense_h_to_4h",
        "mlp.fc_out": "mlp.dense_4h_to_h",
    }
    if sandwich:
        names["attention_output_norm"] = "before_first_addition_layernorm"
        names["mlp_output_norm"] = "before_second_addition_layernorm"
    return {
        f"model.layers.{layer}.{ours}.{kind}": f"transformer.layers.{layer}.{theirs}.{kind}"
        for ours, theirs in names.items()
        for kind in ("weight", "bias")
    }


def rudalle_tensors(
    state_dict: dict[str, torch.Tensor], config: DalleConfig, source: str = "The checkpoint"
) -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    """
    The converted model's tensors, in order (embeddings, then block after block, then norms and head), each as
    `(name, make)` where `make()` returns the tensor: a view of the (memory-mapped) checkpoint where the weight is
    taken as it is, a new tensor where tables are joined or pads summed. Checks first that the checkpoint (named
    `source` in errors) holds exactly the tensors of `config`, each of its shape and finite ([`check_state_dict`]).
    """
    text_length = config.mask_text_length  # ruDALL-E's text_seq_length
    direct = {
        "model.embeddings.image_row_embedding.weight": "image_row_embeddings.weight",
        "model.embeddings.image_column_embedding.weight": "image_col_embeddings.weight",
        "model.final_norm.weight": "transformer.final_layernorm.weight",
        "model.final_norm.bias": "transformer.final_layernorm.bias",
        "model.head_norm.weight": "to_logits.0.weight",
        "model.head_norm.bias": "to_logits.0.bias",
        "lm_head.weight": "to_logits.1.weight",
        "lm_head.bias": "to_logits.1.bias",
    }
    for layer in range(config.num_hidden_layers):
        direct.update(_layer_keys(layer, config.sandwich_layernorm))
    tables = ("text_embeddings.weight", "image_embeddings.weight", "text_pos_embeddings.weight")
    with torch.device("meta"):
        ours = DalleForImageGeneration(config).state_dict()
    width = config.hidden_size
    shapes = {
        "text_embeddings.weight": (config.text_vocab_size, width),
        "image_embeddings.weight": (config.image_vocab_size, width),
        "text_pos_embeddings.weight": (text_length + 1, width),
    }
    shapes |= {theirs: tuple(ours[name].shape) for name, theirs in direct.items()}
    check_state_dict(
        {name: tensor for name, tensor in state_dict.items() if name not in _MASK_BUFFERS},
        shapes,
        source,
        f"the ruDALL-E config ({config.num_hidden_layers} layers, hidden size {width}, sandwich LayerNorm "
        f"{config.sandwich_layernorm})",
        hint=" Is --model_name / --rudalle_config the one of this checkpoint?",
    )

    text, image, positions = (state_dict[name] for name in tables)

    def text_pad_embedding() -> torch.Tensor:
        # ruDALL-E embeds a pad in caption slot i as token `vocab_size - text_seq_length + i` + position i; v2's
        # extra BOS shifts caption slot i to stream position i + 1 (its position 0, the extra BOS, is never a pad).
        # Summed in float32 and kept so: this small table is exact only at that precision.
        pad_tokens = text[config.text_vocab_size - text_length :].float()
        offset = config.image_mask_offset
        summed = pad_tokens[: config.max_text_length - offset] + positions[offset : config.max_text_length].float()
        return torch.cat([text[2:3].float() + positions[:offset].float(), summed]) if offset else summed

    yield "model.embeddings.token_embedding.weight", lambda: torch.cat([text, image])
    yield "model.embeddings.text_position_embedding.weight", lambda: positions[: config.max_text_length]
    yield "model.embeddings.text_pad_embedding.weight", text_pad_embedding
    for name, source in direct.items():
        yield name, (lambda source=source: state_dict[source])


def save_sharded_safetensors(
    tensors: Iterator[tuple[str, Callable[[], torch.Tensor]]],
    sizes: dict[str, int],
    output_dir: str | os.PathLike,
    max_shard_bytes: int = 2 * 2**30,
) -> list[str]:
    """
    Write `tensors` (`(name, make)` pairs, made one at a time) as transformers' sharded safetensors layout:
    `model-0000k-of-0000n.safetensors` files of at most `max_shard_bytes` (a larger tensor gets a shard of its own)
    and `model.safetensors.index.json`, or a single `model.safetensors`. `sizes` are the tensors' byte counts, which
    fix the shards before any tensor is made. Only one shard's new tensors are in memory at a time.
    """
    output_dir = Path(output_dir)
    groups: list[list[str]] = []
    shard_bytes = 0
    for name, size in sizes.items():
        if not groups or shard_bytes + size > max_shard_bytes:
            groups.append([])
            shard_bytes = 0
        groups[-1].append(name)
        shard_bytes += size
    makers = dict(tensors)
    if list(makers) != list(sizes):
        raise ValueError("`sizes` must name the tensors of `tensors`, in the same order.")
    filenames = (
        ["model.safetensors"]
        if len(groups) == 1
        else [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    )
    weight_map = {}
    for names, filename in zip(groups, filenames):
        shard = {name: makers[name]().contiguous() for name in names}
        save_file(shard, str(output_dir / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
        del shard
    if len(groups) > 1:
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": weight_map}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return filenames


# The characters Python's `str.strip()` removes (`str.isspace`), as a regex class (tokenizers' Oniguruma `\s` is
# another set).
_PYTHON_SPACES = "[" + "".join(f"\\x{{{c:x}}}" for c in range(0x3001) if chr(c).isspace()) + "]+"


def rudalle_tokenizer(bpe_model: str | os.PathLike, config: DalleConfig) -> DalleTokenizer:
    """
    ruDALL-E's caption tokenizer (its YouTokenToMe `bpe.model`) as a [`DalleTokenizer`] that gives ruDALL-E's ids:
    the caption lowercased and stripped (`generate_images`: `text.lower().strip()`), YTTM's BPE, `[BOS] ids [EOS]`
    (v2, `config.image_mask_offset == 1`: `[BOS] [BOS] ids [EOS]`) cut to `config.max_text_length` (an over-long
    caption loses its EOS, as in ruDALL-E), padded with `<PAD>` (0). Special tokens are never matched inside a caption
    (`split_special_tokens`): "<BOS>" in a caption is text, as YTTM reads it.
    """
    model = read_yttm_model(bpe_model)
    specials = {"pad": (PAD_TOKEN, model.pad_id), "bos": (BOS_TOKEN, model.bos_id), "eos": (EOS_TOKEN, model.eos_id)}
    if {kind: token_id for kind, (_, token_id) in specials.items()} != {"pad": 0, "bos": 2, "eos": 3}:
        raise ValueError(
            f"{bpe_model}: ruDALL-E's tokenizer has pad 0, bos 2, eos 3; this model has "
            f"pad {model.pad_id}, bos {model.bos_id}, eos {model.eos_id}."
        )
    if model.vocab_size > config.text_vocab_size - config.mask_text_length:
        raise ValueError(
            f"{bpe_model} has {model.vocab_size} tokens, but the transformer's text vocabulary "
            f"({config.text_vocab_size}) keeps only {config.text_vocab_size - config.mask_text_length} below its "
            "per-position pad tokens: is this the tokenizer of this model?"
        )
    backend = convert_yttm_to_tokenizer(bpe_model)
    # Python's lower() then strip() (tokenizers' Lowercase maps each character alone: a final capital sigma becomes
    # "σ" where Python writes "ς").
    backend.normalizer = normalizers.Sequence(
        [normalizers.Lowercase(), normalizers.Replace(Regex(f"\\A{_PYTHON_SPACES}|{_PYTHON_SPACES}\\z"), "")]
    )
    bos = f"{BOS_TOKEN} " * (1 + config.image_mask_offset)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos}$A {EOS_TOKEN}", special_tokens=[(BOS_TOKEN, 2), (EOS_TOKEN, 3)]
    )
    return DalleTokenizer(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        model_max_length=config.max_text_length,
        split_special_tokens=True,
    )


def rudalle_generation_config() -> GenerationConfig:
    """ruDALL-E's sampling defaults, which [`DallePipeline`] reads from the transformer's `generation_config`."""
    return GenerationConfig(do_sample=True, top_k=RUDALLE_TOP_K, top_p=RUDALLE_TOP_P)


def read_rudalle_transformer(
    checkpoint: str | os.PathLike, model_params: dict
) -> tuple[DalleConfig, list[tuple[str, Callable[[], torch.Tensor]]]]:
    """
    The [`DalleConfig`] of a ruDALL-E checkpoint (`model_params` as [`convert_rudalle_transformer`] takes them) and
    its converted tensors ([`rudalle_tensors`]), every tensor of the (memory-mapped) checkpoint checked against the
    config. The config's layers are bounded by the checkpoint's before anything is built from it.
    """
    state_dict = load_torch_checkpoint_state_dict(checkpoint)
    num_layers = model_params.get("num_layers") if isinstance(model_params, dict) else None
    checkpoint_layers = len({key.split(".")[2] for key in state_dict if key.startswith("transformer.layers.")})
    if isinstance(num_layers, int) and num_layers > checkpoint_layers:
        raise ValueError(
            f"The ruDALL-E config asks for {num_layers} layers, but {os.fspath(checkpoint)!r} holds "
            f"{checkpoint_layers}: is --model_name / --rudalle_config the one of this checkpoint?"
        )
    config = rudalle_dalle_config(model_params)
    tensors = list(rudalle_tensors(state_dict, config, repr(os.fspath(checkpoint))))
    config.dtype = state_dict["to_logits.1.weight"].dtype
    return config, tensors


def write_rudalle_transformer(
    config: DalleConfig,
    tensors: list[tuple[str, Callable[[], torch.Tensor]]],
    output_dir: str | os.PathLike,
    max_shard_bytes: int = 2 * 2**30,
) -> None:
    """Write what [`read_rudalle_transformer`] returns into `output_dir` (an existing folder, written in place):
    `config.json`, `generation_config.json` and the safetensors shards."""
    width, dtype = config.hidden_size, config.dtype
    pad_shape = (config.max_text_length, width)
    shapes = {
        "model.embeddings.token_embedding.weight": (config.vocab_size, width),
        "model.embeddings.text_position_embedding.weight": pad_shape,
    }
    sizes = {}
    for name, make in tensors:
        if name == "model.embeddings.text_pad_embedding.weight":
            sizes[name] = pad_shape[0] * pad_shape[1] * 4  # float32, see rudalle_tensors
        elif name in shapes:
            sizes[name] = shapes[name][0] * shapes[name][1] * dtype.itemsize
        else:
            tensor = make()
            sizes[name] = tensor.numel() * tensor.element_size()
    save_sharded_safetensors(iter(tensors), sizes, output_dir, max_shard_bytes)
    config.save_pretrained(output_dir)
    rudalle_generation_config().save_pretrained(output_dir)


def convert_rudalle_transformer(
    checkpoint: str | os.PathLike,
    model_params: dict,
    output_dir: str | os.PathLike,
    max_shard_bytes: int = 2 * 2**30,
) -> DalleConfig:
    """
    Convert a ruDALL-E checkpoint into a [`DalleForImageGeneration`] folder (`config.json`,
    `generation_config.json`, safetensors shards) in `output_dir`, which must exist and is written in place (callers
    write into a temporary folder and move it). `model_params`: ruDALL-E's `model_params` plus `hf_version`, e.g.
    `{**RUDALLE_MODELS[name].model_params, "hf_version": RUDALLE_MODELS[name].hf_version}`. Returns the config.
    """
    config, tensors = read_rudalle_transformer(checkpoint, model_params)
    write_rudalle_transformer(config, tensors, output_dir, max_shard_bytes)
    return config


def rudalle_model_params(model_name: str | None = None, rudalle_config: dict | None = None) -> dict:
    """The `model_params` (plus `hf_version`) of a released model (`model_name`, a key of `RUDALLE_MODELS`) or the
    given ruDALL-E config; exactly one of the two."""
    if (model_name is None) == (rudalle_config is None):
        raise ValueError("Name a released model (`model_name`) or give a ruDALL-E config, not both and not neither.")
    if rudalle_config is not None:
        return dict(rudalle_config)
    if model_name not in RUDALLE_MODELS:
        raise ValueError(f"Unknown ruDALL-E model {model_name!r}; the released ones are {list(RUDALLE_MODELS)}.")
    release = RUDALLE_MODELS[model_name]
    return {**release.model_params, "hf_version": release.hf_version}


def convert_rudalle(
    checkpoint: str | os.PathLike,
    model_params: dict,
    output_dir: str | os.PathLike,
    tokenizer: str | os.PathLike | None = None,
    vqgan_checkpoint: str | os.PathLike | None = None,
    vqgan_config: str | os.PathLike | None = None,
    ruclip_dir: str | os.PathLike | None = None,
    max_shard_bytes: int = 500 * 2**20,
) -> DalleConfig:
    """
    Convert a ruDALL-E transformer `checkpoint` into `output_dir` as the `transformer/` subfolder of a
    [`DallePipeline`] folder, with the components given: its `bpe.model` caption `tokenizer` (`tokenizer/`), its Sber
    VQGAN (`vqgan_checkpoint` + taming's `vqgan_config` YAML, `vae/`; the wavelet variant is recognised from its
    keys) and a ruCLIP folder as the reranker (`clip_model/` + `clip_processor/`). With a tokenizer and a VQGAN the
    folder is a complete pipeline (`model_index.json`, with ruCLIP's prompt templates for reranking when it has
    ruCLIP). Every input is read and checked first (each tensor of each checkpoint against its config:
    [`check_state_dict`]), then the folder is written through a temporary folder, so that an interrupted run leaves no
    half-written file. Returns the transformer's config.

    Memory: the checkpoint is memory-mapped and each shard of at most `max_shard_bytes` is built, written and freed
    before the next, so the peak stays near one shard above the baseline whatever the model's size.
    """
    if (vqgan_checkpoint is None) != (vqgan_config is None):
        raise ValueError(
            "A VQGAN needs both its checkpoint and its taming YAML config (vqgan.gumbelf8-sber.config.yml)."
        )
    config, tensors = read_rudalle_transformer(checkpoint, model_params)  # every tensor checked, nothing written
    converted_tokenizer = rudalle_tokenizer(tokenizer, config) if tokenizer is not None else None
    vqgan = convert_sber_vqgan(vqgan_checkpoint, vqgan_config) if vqgan_checkpoint is not None else None
    if vqgan is not None and vqgan.config.vocab_size != config.image_vocab_size:
        raise ValueError(
            f"The VQGAN has {vqgan.config.vocab_size} codes, the transformer {config.image_vocab_size}: not a pair."
        )
    clip_model, clip_processor = convert_ruclip(ruclip_dir) if ruclip_dir is not None else (None, None)

    def write(folder: Path) -> None:
        (folder / "transformer").mkdir()
        write_rudalle_transformer(config, tensors, folder / "transformer", max_shard_bytes)
        if converted_tokenizer is not None:
            converted_tokenizer.save_pretrained(folder / "tokenizer")
        if vqgan is not None:
            vqgan.save_pretrained(folder / "vae")
        if clip_model is not None:
            clip_model.save_pretrained(folder / "clip_model")
            clip_processor.save_pretrained(folder / "clip_processor")
        if converted_tokenizer is not None and vqgan is not None:
            # model_index.json from the pipeline itself, around a transformer on the meta device (no weights loaded).
            with init_empty_weights():
                transformer = DalleForImageGeneration(config)
            templates = RUCLIP_PROMPT_TEMPLATES if clip_model is not None else None
            pipe = DallePipeline(
                converted_tokenizer, transformer, vqgan, clip_model, clip_processor, clip_prompt_templates=templates
            )
            pipe.save_config(folder)

    write_folder_atomically(output_dir, write)
    return config


__all__ = [
    "RUCLIP_PROMPT_TEMPLATES",
    "RUDALLE_MODELS",
    "RUDALLE_TOKENIZER_FILENAME",
    "RUDALLE_TOP_K",
    "RUDALLE_TOP_P",
    "RUDALLE_UTILS_REPO",
    "RUDALLE_VQGAN_FILENAMES",
    "RudalleRelease",
    "convert_rudalle",
    "convert_rudalle_transformer",
    "rudalle_attention_types",
    "rudalle_dalle_config",
    "rudalle_generation_config",
    "rudalle_model_params",
    "rudalle_tensors",
    "rudalle_tokenizer",
    "read_rudalle_transformer",
    "save_sharded_safetensors",
    "write_rudalle_transformer",
]

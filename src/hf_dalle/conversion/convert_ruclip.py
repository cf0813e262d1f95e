"""Convert ruCLIP (`ai-forever/ru-clip`: `config.json`, `pytorch_model.bin`, `bpe.model`) into a transformers
`CLIPModel` + `CLIPProcessor`, the reranker of ruDALL-E.

ruCLIP is OpenAI's CLIP layout (pre-LN transformers with QuickGELU, a ViT with a class token, linear projections
without bias), which `CLIPModel` holds exactly: vision heads are `vision_width / 64`, and the text is pooled at the
first EOS (id 3). Its tokenizer is a YouTokenToMe BPE model (converted by [`~hf_dalle.conversion.convert_yttm`]);
ruCLIP's processor lowercases the text (without stripping it), cuts the ids to `context_length - 2`, then adds BOS (2)
and EOS (3) and pads with 0: the converted tokenizer does the same with `truncation=True, padding="max_length"`.
"""

import json
import os

import torch
from tokenizers import normalizers, processors
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, PreTrainedTokenizerFast
from transformers.image_utils import PILImageResampling

from .checkpoints import check_state_dict, load_torch_checkpoint_state_dict
from .convert_yttm import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN, convert_yttm_to_tokenizer, read_yttm_model


RUCLIP_CONFIG_KEYS = (
    "embed_dim",
    "image_resolution",
    "vision_layers",
    "vision_width",
    "vision_patch_size",
    "context_length",
    "vocab_size",
    "transformer_width",
    "transformer_heads",
    "transformer_layers",
)
# ruCLIP's processor defaults (OpenAI CLIP's), unless its config.json names `mean` / `std`.
RUCLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
RUCLIP_STD = [0.26862954, 0.26130258, 0.27577711]

LAYER_NAMES = {
    "attn.out_proj": "self_attn.out_proj",
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
}


def ruclip_clip_config(ruclip_config: dict, source: str = "The ruCLIP config") -> CLIPConfig:
    """The `CLIPConfig` of a ruCLIP `config.json` (`source` names it in errors)."""
    if not isinstance(ruclip_config, dict):
        raise ValueError(f"{source} is not a ruCLIP config.json: it holds a {type(ruclip_config).__name__}.")
    missing = [key for key in RUCLIP_CONFIG_KEYS if key not in ruclip_config]
    if missing:
        raise ValueError(f"{source} is not a ruCLIP config.json: it lacks {missing}.")
    c = ruclip_config
    wrong = [
        f"{key}={c[key]!r}"
        for key in RUCLIP_CONFIG_KEYS
        if not isinstance(c[key], int) or isinstance(c[key], bool) or c[key] < 1
    ]
    if wrong:
        raise ValueError(f"{source}: the sizes must be positive integers, got {', '.join(wrong)}.")
    if c["vision_width"] % 64:
        raise ValueError(f"{source}: vision_width must be a multiple of 64 (ruCLIP's heads), got {c['vision_width']}.")
    if c["transformer_width"] % c["transformer_heads"]:
        raise ValueError(
            f"{source}: transformer_width ({c['transformer_width']}) must be a multiple of transformer_heads "
            f"({c['transformer_heads']})."
        )
    for key in ("mean", "std"):
        values = c.get(key)
        if values is not None and not (
            isinstance(values, list)
            and len(values) == 3
            and all(isinstance(v, (int, float)) and 0 <= v < float("inf") for v in values)
            and (key == "mean" or all(v > 0 for v in values))
        ):
            raise ValueError(f"{source}: {key} must be 3 finite numbers (one per RGB channel), got {values!r}.")
    return CLIPConfig(
        text_config={
            "vocab_size": c["vocab_size"],
            "hidden_size": c["transformer_width"],
            "intermediate_size": 4 * c["transformer_width"],
            "num_hidden_layers": c["transformer_layers"],
            "num_attention_heads": c["transformer_heads"],
            "max_position_embeddings": c["context_length"],
            "hidden_act": "quick_gelu",
            "pad_token_id": 0,
            "bos_token_id": 2,
            "eos_token_id": 3,  # pooling takes the first EOS
        },
        vision_config={
            "hidden_size": c["vision_width"],
            "intermediate_size": 4 * c["vision_width"],
            "num_hidden_layers": c["vision_layers"],
            "num_attention_heads": c["vision_width"] // 64,
            "image_size": c["image_resolution"],
            "patch_size": c["vision_patch_size"],
            "hidden_act": "quick_gelu",
        },
        projection_dim=c["embed_dim"],
    )


# The layer stacks of a ruCLIP checkpoint: (its prefix, `CLIPModel`'s prefix, the sub-config that holds their depth).
ENCODERS = (
    ("transformer.resblocks.", "text_model.encoder.layers.", "text_config"),
    ("visual.transformer.resblocks.", "vision_model.encoder.layers.", "vision_config"),
)
# `CLIPModel` parameter -> ruCLIP tensor, taken as it is (the two projections are transposed besides).
DIRECT_NAMES = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
TRANSPOSED_NAMES = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}


def ruclip_to_clip_state_dict(state_dict: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """
    Map ruCLIP's `pytorch_model.bin` (OpenAI CLIP names) onto `CLIPModel`'s parameters, as views (nothing copied).
    What the checkpoint lacks is left out and what has no place keeps its own name, so that [`check_state_dict`]
    against the model names both.
    """
    converted, used = {}, set()

    def take(name: str, key: str, transform=None) -> None:
        if key in state_dict:
            converted[name] = state_dict[key] if transform is None else transform(state_dict[key])
            used.add(key)

    for name, key in DIRECT_NAMES.items():
        take(name, key)
    for name, key in TRANSPOSED_NAMES.items():
        take(name, key, torch.t)
    for prefix, target, sub_config in ENCODERS:
        for layer in range(getattr(config, sub_config).num_hidden_layers):
            source, destination = f"{prefix}{layer}.", f"{target}{layer}."
            for kind in ("weight", "bias"):
                for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    # The fused [q|k|v] projection in thirds (check_state_dict names a wrong shape).
                    take(
                        f"{destination}self_attn.{name}.{kind}",
                        f"{source}attn.in_proj_{kind}",
                        lambda tensor, index=index: tensor.tensor_split(3)[index] if tensor.ndim else tensor,
                    )
                for old, new in LAYER_NAMES.items():
                    take(f"{destination}{new}.{kind}", f"{source}{old}.{kind}")
    converted.update({key: value for key, value in state_dict.items() if key not in used})
    return converted


def ruclip_tokenizer(bpe_model_path: str | os.PathLike, context_length: int) -> PreTrainedTokenizerFast:
    """ruCLIP's text processing as a fast tokenizer: `tokenizer(texts, padding="max_length", truncation=True)` gives
    the ids of `RuCLIPProcessor.encode_text` (lowercased, cut to `context_length - 2`, BOS and EOS, padded with 0)."""
    model = read_yttm_model(bpe_model_path)
    expected = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
    actual = {name: getattr(model, name) for name in expected}
    if actual != expected:
        raise ValueError(f"ruCLIP's processor hard-codes the special ids {expected}; {bpe_model_path} has {actual}.")
    backend = convert_yttm_to_tokenizer(bpe_model_path)
    backend.normalizer = normalizers.Lowercase()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}", special_tokens=[(BOS_TOKEN, 2), (EOS_TOKEN, 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        split_special_tokens=True,  # a text that says "<BOS>" is text, as in ruCLIP, not the special token
        model_max_length=context_length,
        padding_side="right",
        truncation_side="right",
    )


def convert_ruclip(
    folder: str | os.PathLike, torch_dtype: torch.dtype = torch.float32
) -> tuple[CLIPModel, CLIPProcessor]:
    """
    Convert a ruCLIP folder (`config.json`, `pytorch_model.bin`, `bpe.model`, as `ai-forever/ruclip-vit-*` on the Hub)
    into a `CLIPModel` and its `CLIPProcessor`. The weights are read with `torch.load(weights_only=True)` from a memory
    map and every tensor is checked against `config.json` ([`check_state_dict`]) before the model is allocated, so a
    config cannot ask for more than its weights hold. The image processor resizes the shorter side to
    `image_resolution` (bilinear) and centre-crops, as ruCLIP's torchvision transform does.
    """
    folder = os.fspath(folder)
    paths = {name: os.path.join(folder, name) for name in ("config.json", "pytorch_model.bin", "bpe.model")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{folder!r} is not a ruCLIP folder: it lacks {missing}.")
    config_source, weights_source = repr(paths["config.json"]), repr(paths["pytorch_model.bin"])
    try:
        with open(paths["config.json"], encoding="utf-8") as f:
            ruclip_config = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_source} is not a ruCLIP config.json (not JSON: {error}).") from None
    config = ruclip_clip_config(ruclip_config, config_source)
    state_dict = load_torch_checkpoint_state_dict(paths["pytorch_model.bin"])
    # The depths config.json asks for, bounded by the checkpoint's before a model of that depth is built.
    for prefix, _, sub_config in ENCODERS:
        depth = getattr(config, sub_config).num_hidden_layers
        held = len({key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)})
        if depth != held:
            raise ValueError(
                f"{config_source} asks for {depth} layers under `{prefix}`, but {weights_source} holds {held}: not "
                "the config of these weights."
            )
    converted = ruclip_to_clip_state_dict(state_dict, config)
    with torch.device("meta"):
        shapes = {name: tuple(tensor.shape) for name, tensor in CLIPModel(config).state_dict().items()}
    check_state_dict(converted, shapes, weights_source, f"the CLIP of {config_source}")
    model = CLIPModel(config)  # allocated only now, at the checked weights' size (its position ids are buffers)
    model.load_state_dict(converted, strict=True)
    resolution = ruclip_config["image_resolution"]
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": resolution},
        crop_size={"height": resolution, "width": resolution},
        resample=PILImageResampling.BILINEAR,
        image_mean=ruclip_config.get("mean") or RUCLIP_MEAN,
        image_std=ruclip_config.get("std") or RUCLIP_STD,
    )
    tokenizer = ruclip_tokenizer(paths["bpe.model"], ruclip_config["context_length"])
    return model.to(torch_dtype).eval(), CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)


__all__ = ["convert_ruclip", "ruclip_clip_config", "ruclip_to_clip_state_dict", "ruclip_tokenizer"]

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

from .checkpoints import load_torch_checkpoint_state_dict
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


def ruclip_clip_config(ruclip_config: dict) -> CLIPConfig:
    """The `CLIPConfig` of a ruCLIP `config.json`."""
    missing = [key for key in RUCLIP_CONFIG_KEYS if key not in ruclip_config]
    if missing:
        raise ValueError(f"Not a ruCLIP config.json: it lacks {missing}.")
    c = ruclip_config
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


def _encoder_layers(state_dict: dict[str, torch.Tensor], prefix: str, target: str, num_layers: int) -> dict:
    converted = {}
    for i in range(num_layers):
        source, destination = f"{prefix}{i}.", f"{target}{i}."
        for kind in ("weight", "bias"):
            for name, value in zip(
                ("q_proj", "k_proj", "v_proj"), state_dict[f"{source}attn.in_proj_{kind}"].chunk(3)
            ):
                converted[f"{destination}self_attn.{name}.{kind}"] = value
            for old, new in LAYER_NAMES.items():
                converted[f"{destination}{new}.{kind}"] = state_dict[f"{source}{old}.{kind}"]
    return converted


def ruclip_to_clip_state_dict(state_dict: dict[str, torch.Tensor], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """Map ruCLIP's `pytorch_model.bin` (OpenAI CLIP names) onto `CLIPModel`'s parameters."""
    try:
        converted = {
            "logit_scale": state_dict["logit_scale"],
            "text_projection.weight": state_dict["text_projection"].t(),
            "visual_projection.weight": state_dict["visual.proj"].t(),
            "text_model.embeddings.token_embedding.weight": state_dict["token_embedding.weight"],
            "text_model.embeddings.position_embedding.weight": state_dict["positional_embedding"],
            "text_model.final_layer_norm.weight": state_dict["ln_final.weight"],
            "text_model.final_layer_norm.bias": state_dict["ln_final.bias"],
            "vision_model.embeddings.patch_embedding.weight": state_dict["visual.conv1.weight"],
            "vision_model.embeddings.class_embedding": state_dict["visual.class_embedding"],
            "vision_model.embeddings.position_embedding.weight": state_dict["visual.positional_embedding"],
            "vision_model.pre_layrnorm.weight": state_dict["visual.ln_pre.weight"],
            "vision_model.pre_layrnorm.bias": state_dict["visual.ln_pre.bias"],
            "vision_model.post_layernorm.weight": state_dict["visual.ln_post.weight"],
            "vision_model.post_layernorm.bias": state_dict["visual.ln_post.bias"],
        }
        converted.update(
            _encoder_layers(
                state_dict,
                "transformer.resblocks.",
                "text_model.encoder.layers.",
                config.text_config.num_hidden_layers,
            )
        )
        converted.update(
            _encoder_layers(
                state_dict,
                "visual.transformer.resblocks.",
                "vision_model.encoder.layers.",
                config.vision_config.num_hidden_layers,
            )
        )
    except KeyError as error:
        raise ValueError(f"Not a ruCLIP checkpoint of this config: it lacks {error.args[0]!r}.") from None
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
    map. The image processor resizes the shorter side to `image_resolution` (bilinear) and centre-crops, as ruCLIP's
    torchvision transform does.
    """
    folder = os.fspath(folder)
    paths = {name: os.path.join(folder, name) for name in ("config.json", "pytorch_model.bin", "bpe.model")}
    missing = [name for name, path in paths.items() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{folder!r} is not a ruCLIP folder: it lacks {missing}.")
    with open(paths["config.json"], encoding="utf-8") as f:
        ruclip_config = json.load(f)
    config = ruclip_clip_config(ruclip_config)
    state_dict = ruclip_to_clip_state_dict(load_torch_checkpoint_state_dict(paths["pytorch_model.bin"]), config)
    model = CLIPModel(config)  # not on the meta device: its position ids are buffers outside the state dict
    model.load_state_dict(state_dict, strict=True)
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

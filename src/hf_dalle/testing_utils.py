"""Tiny random models for tests and smoke runs: a complete DallePipeline (tokenizer, transformer, dVAE or VQGAN, CLIP)
that builds in about a second, with no download."""

import json

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from .models.dalle import DalleConfig, DalleForImageGeneration
from .models.dalle_vae import DalleVAE, DalleVAEConfig
from .models.dalle_vqgan import DalleVQGAN, DalleVQGANConfig
from .pipelines import DallePipeline
from .tokenization_dalle import DalleTokenizer


CAPTIONS = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a red circle above a blue square",
    "a yellow square to the left of a purple triangle",
]


def make_tiny_vqgan(wavelet_decoder: bool = False) -> DalleVQGAN:
    """An untrained Sber-layout VQGAN (Gumbel codes) for the tiny pipeline: 32x32 images, 4x4 codes from 32; with
    `wavelet_decoder`, decoding to 64x64."""
    config = DalleVQGANConfig(
        vocab_size=32,
        embed_dim=32,
        latent_channels=32,
        block_out_channels=[32, 32, 32, 32],
        layers_per_block=1,
        attention_resolutions=[4],
        image_size=32,
        wavelet_decoder=wavelet_decoder,
    )
    return DalleVQGAN(config).eval()


def make_tiny_pipeline(with_clip: bool = True, seed: int = 0, vqgan: bool = False) -> DallePipeline:
    """An untrained pipeline for 32x32 images (4x4 codes from 32, captions of 8 tokens), seeded by `seed`; with
    `vqgan`, its image tokenizer is [`make_tiny_vqgan`]'s (wavelet decoder: 64x64 images) instead of a dVAE."""
    torch.manual_seed(seed)
    tokenizer = DalleTokenizer.train_from_texts(CAPTIONS * 4, vocab_size=300, max_text_length=8)
    transformer = DalleForImageGeneration(
        DalleConfig(
            text_vocab_size=len(tokenizer),
            image_vocab_size=32,
            max_text_length=8,
            image_grid_size=4,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            attention_types=["row", "conv"],
        )
    ).eval()
    if vqgan:
        vae = make_tiny_vqgan(wavelet_decoder=True)
        vae.vqgan.quantize.embedding.weight.data.normal_(0, 1)  # distinct codes decode to distinct images
    else:
        vae = DalleVAE(
            DalleVAEConfig(hidden_size=16, vocab_size=32, num_blocks_per_group=1, decoder_init_size=8, image_size=32)
        ).eval()
        for p in vae.parameters():  # an untrained dVAE decodes every grid to nearly the same gray: make codes visible
            p.data.normal_(0, 0.3)
    clip_model, clip_processor = make_tiny_clip(tokenizer, image_size=32) if with_clip else (None, None)
    return DallePipeline(
        tokenizer=tokenizer, transformer=transformer, vae=vae, clip_model=clip_model, clip_processor=clip_processor
    )


def make_tiny_clip(tokenizer, image_size: int) -> tuple[CLIPModel, CLIPProcessor]:
    """An untrained CLIP reranker for `image_size` images, reading captions with `tokenizer` (a stand-in for CLIP's
    own)."""
    clip_model = CLIPModel(
        CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "max_position_embeddings": max(16, tokenizer.model_max_length),
                "pad_token_id": 0,
                "bos_token_id": 0,
                "eos_token_id": 0,
            },
            vision_config={
                "image_size": image_size,
                "patch_size": 8,
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
            },
            projection_dim=16,
        )
    ).eval()
    size = {"height": image_size, "width": image_size}
    clip_processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=size), tokenizer=tokenizer
    )
    return clip_model, clip_processor


def random_rudalle_state_dict(params: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with the names and shapes of ruDALL-E's `DalleModel` for its `model_params` (`params`), random
    float16 values (made tensor by tensor, so a Malevich-sized one needs no float32 copy), for tests and benchmarks
    that need no ruDALL-E code. Its sandwich LayerNorms are always there."""
    width, text, grid = params["hidden_size"], params["text_seq_length"], params["image_tokens_per_dim"]
    shapes = {
        "text_embeddings.weight": (params["vocab_size"], width),
        "image_embeddings.weight": (params["image_vocab_size"], width),
        "text_pos_embeddings.weight": (text + 1, width),
        "image_row_embeddings.weight": (grid, width),
        "image_col_embeddings.weight": (grid, width),
        "to_logits.0.weight": (width,),
        "to_logits.0.bias": (width,),
        "to_logits.1.weight": (params["vocab_size"] + params["image_vocab_size"], width),
        "to_logits.1.bias": (params["vocab_size"] + params["image_vocab_size"],),
        "transformer.final_layernorm.weight": (width,),
        "transformer.final_layernorm.bias": (width,),
    }
    layer = {
        "input_layernorm": (width, width),
        "before_first_addition_layernorm": (width, width),
        "before_second_addition_layernorm": (width, width),
        "attention.query_key_value": (3 * width, width),
        "attention.dense": (width, width),
        "post_attention_layernorm": (width, width),
        "mlp.dense_h_to_4h": (4 * width, width),
        "mlp.dense_4h_to_h": (width, 4 * width),
    }
    for i in range(params["num_layers"]):
        for name, (rows, columns) in layer.items():
            is_norm = "layernorm" in name
            shapes[f"transformer.layers.{i}.{name}.weight"] = (rows,) if is_norm else (rows, columns)
            shapes[f"transformer.layers.{i}.{name}.bias"] = (rows,)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {name: torch.randn(shape, generator=generator, dtype=torch.float16) for name, shape in shapes.items()}
    state_dict["transformer.row_mask"] = torch.ones(4, 4, dtype=torch.bool)  # ignored: the config gives the masks
    return state_dict


# ---------------------------------------------------------------------------------------- min-dalle's file layouts


def random_min_dalle_state_dicts(
    config, dtype: torch.dtype = torch.float32, seed: int = 0
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Random weights of a [`DalleBartConfig`] in min-dalle's layout: `(encoder.pt's, decoder.pt's)` state dicts (the
    model's own names without `model.encoder.` / `model.decoder.`; the head is decoder.pt's `lm_head.weight`). Every
    tensor is off its initial value: weights and embeddings N(0, 0.02), LayerNorm weights 1 + N(0, 0.1), LayerNorm
    biases N(0, 0.1), so a converter that drops or swaps one is caught. Made tensor by tensor from the shapes of a
    model on the meta device, so that even Mega's shapes need no model in memory."""
    from .models.dalle_bart import DalleBartForImageGeneration

    with torch.device("meta"):
        shapes = {name: tensor.shape for name, tensor in DalleBartForImageGeneration(config).state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    encoder, decoder = {}, {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        is_norm = re_layer_norm(name)
        if is_norm and name.endswith(".weight"):
            tensor = 1 + 0.1 * noise
        elif is_norm:
            tensor = 0.1 * noise
        else:
            tensor = 0.02 * noise
        tensor = tensor.to(dtype)
        if name.startswith("model.encoder."):
            encoder[name.removeprefix("model.encoder.")] = tensor
        else:
            decoder[name.removeprefix("model.decoder.")] = tensor
    return encoder, decoder


def re_layer_norm(name: str) -> bool:
    """Whether a DalleBart parameter belongs to a LayerNorm (min-dalle's names)."""
    module = name.rsplit(".", 2)[-2]
    return module in ("ln0", "ln1", "layernorm_embedding", "final_ln") or module.endswith("layer_norm")


def random_taming_vqgan_state_dict(
    vocab_size: int = 2**14,
    embed_dim: int = 256,
    latent_channels: int = 256,
    block_out_channels: tuple[int, ...] = (128, 128, 256, 256, 512),
    layers_per_block: int = 2,
    attention_levels: tuple[int, ...] = (4,),
    num_channels: int = 3,
    with_encoder: bool = False,
    gumbel: bool = False,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random weights of a taming-transformers VQGAN (`VQModel`) in taming's layout: the codebook
    (`quantize.embedding`), `post_quant_conv` and `decoder.*`, plus `quant_conv` and `encoder.*` with `with_encoder`;
    with `gumbel`, a `GumbelVQ` (ruDALL-E's Sber VQGAN): codebook `quantize.embed` and the projection `quantize.proj`.
    The defaults are dalle-mini's VQGAN f16 16384 (the decoder alone: min-dalle's `detoker.pt`, 46.7M parameters, once
    its codebook is renamed `embedding`). Level `i` (taming's `down.{i}` / `up.{i}`, 0 = full resolution) has
    `block_out_channels[i]` channels and attention if `i` is in `attention_levels`. GroupNorm weights are
    1 + N(0, 0.1), biases N(0, 0.1), convolutions N(0, 1 / fan_in), so a converter that drops or swaps one is caught."""
    generator = torch.Generator().manual_seed(seed)
    codebook = "quantize.embed.weight" if gumbel else "quantize.embedding.weight"
    shapes: dict[str, tuple[int, ...]] = {codebook: (vocab_size, embed_dim)}

    def conv(name: str, out: int, inp: int, kernel: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out, inp, kernel, kernel), (out,)

    def norm(name: str, channels: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (channels,), (channels,)

    def resnet(name: str, inp: int, out: int) -> None:
        norm(f"{name}.norm1", inp)
        conv(f"{name}.conv1", out, inp, 3)
        norm(f"{name}.norm2", out)
        conv(f"{name}.conv2", out, out, 3)
        if inp != out:
            conv(f"{name}.nin_shortcut", out, inp, 1)

    def attention(name: str, channels: int) -> None:
        norm(f"{name}.norm", channels)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", channels, channels, 1)

    def middle(prefix: str, width: int) -> None:
        resnet(f"{prefix}.mid.block_1", width, width)
        attention(f"{prefix}.mid.attn_1", width)
        resnet(f"{prefix}.mid.block_2", width, width)

    if with_encoder:
        width = block_out_channels[0]
        conv("encoder.conv_in", width, num_channels, 3)
        for level, out in enumerate(block_out_channels):
            for block in range(layers_per_block):
                resnet(f"encoder.down.{level}.block.{block}", width, out)
                width = out
                if level in attention_levels:
                    attention(f"encoder.down.{level}.attn.{block}", out)
            if level != len(block_out_channels) - 1:
                conv(f"encoder.down.{level}.downsample.conv", out, out, 3)
        middle("encoder", width)
        norm("encoder.norm_out", width)
        conv("encoder.conv_out", latent_channels, width, 3)
        conv("quant_conv", embed_dim, latent_channels, 1)
        if gumbel:
            conv("quantize.proj", vocab_size, latent_channels, 1)
    conv("post_quant_conv", latent_channels, embed_dim, 1)
    width = block_out_channels[-1]
    conv("decoder.conv_in", width, latent_channels, 3)
    middle("decoder", width)
    for level in reversed(range(len(block_out_channels))):
        out = block_out_channels[level]
        for block in range(layers_per_block + 1):
            resnet(f"decoder.up.{level}.block.{block}", width, out)
            width = out
            if level in attention_levels:
                attention(f"decoder.up.{level}.attn.{block}", out)
        if level != 0:
            conv(f"decoder.up.{level}.upsample.conv", out, out, 3)
    norm("decoder.norm_out", width)
    conv("decoder.conv_out", num_channels, width, 3)

    state_dict = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=generator)
        if "norm" in name.rsplit(".", 2)[-2]:
            state_dict[name] = 1 + 0.1 * noise if name.endswith(".weight") else 0.1 * noise
        elif len(shape) == 4:
            state_dict[name] = noise / (shape[1] * shape[2] * shape[3]) ** 0.5
        else:
            state_dict[name] = 0.1 * noise if name != codebook else noise
    return state_dict


def random_ruclip_state_dict(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random ruCLIP `pytorch_model.bin` state dict (OpenAI CLIP's layout) for a ruCLIP `config.json`."""
    generator = torch.Generator().manual_seed(seed)
    width, vision_width = config["transformer_width"], config["vision_width"]
    patch, grid = config["vision_patch_size"], config["image_resolution"] // config["vision_patch_size"]
    shapes = {
        "logit_scale": (),
        "text_projection": (width, config["embed_dim"]),
        "token_embedding.weight": (config["vocab_size"], width),
        "positional_embedding": (config["context_length"], width),
        "ln_final.weight": (width,),
        "ln_final.bias": (width,),
        "visual.proj": (vision_width, config["embed_dim"]),
        "visual.conv1.weight": (vision_width, 3, patch, patch),
        "visual.class_embedding": (vision_width,),
        "visual.positional_embedding": (grid * grid + 1, vision_width),
        **{f"visual.{norm}.{kind}": (vision_width,) for norm in ("ln_pre", "ln_post") for kind in ("weight", "bias")},
    }
    for prefix, layers, size in (
        ("transformer", config["transformer_layers"], width),
        ("visual.transformer", config["vision_layers"], vision_width),
    ):
        for layer in range(layers):
            block = f"{prefix}.resblocks.{layer}"
            shapes |= {
                f"{block}.attn.in_proj_weight": (3 * size, size),
                f"{block}.attn.in_proj_bias": (3 * size,),
                f"{block}.attn.out_proj.weight": (size, size),
                f"{block}.mlp.c_fc.weight": (4 * size, size),
                f"{block}.mlp.c_fc.bias": (4 * size,),
                f"{block}.mlp.c_proj.weight": (size, 4 * size),
                **{f"{block}.{name}.bias": (size,) for name in ("attn.out_proj", "mlp.c_proj")},
                **{f"{block}.{norm}.{kind}": (size,) for norm in ("ln_1", "ln_2") for kind in ("weight", "bias")},
            }
    return {name: 0.1 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def detoker_state_dict(taming_state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder side of a taming VQGAN state dict in min-dalle's `detoker.pt` layout (codebook `embedding`)."""
    return {
        ("embedding.weight" if key == "quantize.embedding.weight" else key): value
        for key, value in taming_state_dict.items()
        if not key.startswith(("encoder.", "quant_conv."))
    }


def small_vqgan_sizes(config) -> dict:
    """Sizes of a small VQGAN for the codes of a (small) [`DalleBartConfig`]: 4x upsampling, attention at the
    lowest level; the arguments of [`random_taming_vqgan_state_dict`]."""
    return {
        "vocab_size": config.image_vocab_size,
        "embed_dim": 32,
        "latent_channels": 32,
        "block_out_channels": (32, 32, 64),
        "layers_per_block": 1,
        "attention_levels": (2,),
    }


def train_bart_style_bpe(texts: list[str], vocab_size: int = 400) -> tuple[dict[str, int], list[str]]:
    """A small BPE in the format of BART's (and dalle-mini's) `vocab.json` + `merges.txt`: byte-level symbols, `Ġ`
    before each word, `<s>` 0, `<pad>` 1, `</s>` 2, `<unk>` 3. Returns the vocabulary and the lines of merges.txt
    (header first)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    state = json.loads(backend.to_str())["model"]
    merges = [" ".join(pair) if isinstance(pair, list) else pair for pair in state["merges"]]
    return state["vocab"], ["#version: 0.2", *merges]


def write_min_dalle_models_root(
    root,
    config,
    model_name: str = "mega",
    texts: list[str] | None = None,
    detoker: dict[str, torch.Tensor] | None = None,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Write min-dalle's `models_root` layout under `root` for a (small) [`DalleBartConfig`]: `dalle_bart_{model_name}/`
    with random `encoder.pt` / `decoder.pt` ([`random_min_dalle_state_dicts`]) and a BPE trained on `texts`
    (`vocab.json`, `merges.txt`; at most `config.text_vocab_size` tokens), and `vqgan/detoker.pt` (`detoker`, by
    default a small random one for a 4x upsampling decoder). Returns the decoder's state dict."""
    from pathlib import Path

    root = Path(root)
    folder, vqgan = root / f"dalle_bart_{model_name}", root / "vqgan"
    folder.mkdir(parents=True, exist_ok=True)
    vqgan.mkdir(parents=True, exist_ok=True)
    encoder, decoder = random_min_dalle_state_dicts(config, dtype, seed)
    torch.save(encoder, folder / "encoder.pt")
    torch.save(decoder, folder / "decoder.pt")
    vocab, merges = train_bart_style_bpe(texts or CAPTIONS * 4, vocab_size=min(config.text_vocab_size, 400))
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    if detoker is None:
        detoker = detoker_state_dict(random_taming_vqgan_state_dict(**small_vqgan_sizes(config), seed=seed + 1))
    torch.save(detoker, vqgan / "detoker.pt")
    return decoder


def write_flax_vqgan_checkpoint(path, taming_state_dict: dict[str, torch.Tensor]) -> None:
    """A Flax checkpoint of a taming VQGAN state dict, as vqgan-jax's `convert_pt_model_to_jax.py` + `save_pretrained`
    write dalle-mini's `flax_model.msgpack`: keys renamed `down.0` -> `down_0` (every `name.N`; the middle block's
    `block_1` stays), norm weights as `scale`, convolution weights as `kernel` `[h, w, in, out]`, the codebook as
    `quantize/embedding/embedding`; serialized as flax does (msgpack, arrays as extension 1 holding `(shape, dtype
    name, bytes)`)."""
    import re
    from pathlib import Path

    import msgpack
    import numpy as np

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
    Path(path).write_bytes(msgpack.packb(tree, use_bin_type=True))


def tiny_dalle_bart_config(**overrides):
    """A [`DalleBartConfig`] of test size with DALL·E Mega's heads (32, so that a conversion needs no
    `--num_attention_heads`): 2 + 2 layers of width 64, captions of 16 tokens, 4x4 codes of 64, a decoder table with
    extra rows as Mega's, decoding from min-dalle's start code (the last code)."""
    from .models.dalle_bart import DalleBartConfig

    sizes = {
        "text_vocab_size": 400,
        "image_vocab_size": 64,
        "decoder_vocab_size": 66,
        "max_text_length": 16,
        "image_grid_size": 4,
        "hidden_size": 64,
        "encoder_layers": 2,
        "decoder_layers": 2,
        "num_attention_heads": 32,
        "intermediate_size": 96,
        "decoder_start_token_id": 63,
    }
    return DalleBartConfig(**{**sizes, **overrides})


# The stand-ins of `write_tiny_dalle_mega_sources`: what the README's "Run DALL·E Mini / Mega" section names.
TINY_DALLE_MEGA_SOURCES = {
    "models_root": "pretrained",
    "vqgan_flax_checkpoint": "vqgan_imagenet_f16_16384/flax_model.msgpack",
    "clip_model": "clip-vit-base-patch32",
}


def write_tiny_dalle_mega_sources(root, config=None, model_name: str = "mega", seed: int = 0) -> dict:
    """
    Tiny random stand-ins, under `root`, for the files a DALL·E Mini / Mega conversion reads (the paths of
    `TINY_DALLE_MEGA_SOURCES`): min-dalle's `models_root` ([`write_min_dalle_models_root`] for `config`, default
    [`tiny_dalle_bart_config`]), the whole VQGAN as dalle-mini's Flax checkpoint (its decoder and codebook are the
    `detoker.pt` of the models root, with a random encoder; 16x16 images) and a CLIP folder ([`make_tiny_clip`], with
    the caption tokenizer as its tokenizer). Returns the paths, by the keys of `TINY_DALLE_MEGA_SOURCES`.
    """
    from pathlib import Path

    from .tokenization_dalle_bart import DalleBartTokenizer

    root = Path(root)
    config = config or tiny_dalle_bart_config()
    paths = {name: root / path for name, path in TINY_DALLE_MEGA_SOURCES.items()}
    vqgan = random_taming_vqgan_state_dict(**small_vqgan_sizes(config), with_encoder=True, seed=seed + 1)
    write_min_dalle_models_root(paths["models_root"], config, model_name, detoker=detoker_state_dict(vqgan), seed=seed)
    paths["vqgan_flax_checkpoint"].parent.mkdir(parents=True, exist_ok=True)
    write_flax_vqgan_checkpoint(paths["vqgan_flax_checkpoint"], vqgan)
    folder = paths["models_root"] / f"dalle_bart_{model_name}"
    tokenizer = DalleBartTokenizer.from_min_dalle_files(
        folder / "vocab.json", folder / "merges.txt", config.max_text_length
    )
    torch.manual_seed(seed)
    clip_model, clip_processor = make_tiny_clip(tokenizer, image_size=config.image_grid_size * 4)
    clip_model.save_pretrained(paths["clip_model"])
    clip_processor.save_pretrained(paths["clip_model"])
    return paths

"""Tiny random models for tests and smoke runs: a complete DallePipeline (tokenizer, transformer, dVAE or VQGAN, CLIP)
that builds in about a second, with no download."""

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
    clip_model = clip_processor = None
    if with_clip:
        clip_model = CLIPModel(
            CLIPConfig(
                text_config={
                    "vocab_size": len(tokenizer),
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                    "max_position_embeddings": 16,
                    "pad_token_id": 0,
                    "bos_token_id": 0,
                    "eos_token_id": 0,
                },
                vision_config={
                    "image_size": 32,
                    "patch_size": 8,
                    "hidden_size": 32,
                    "intermediate_size": 64,
                    "num_hidden_layers": 1,
                    "num_attention_heads": 2,
                },
                projection_dim=16,
            )
        ).eval()
        clip_processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
            tokenizer=tokenizer,
        )
    return DallePipeline(
        tokenizer=tokenizer, transformer=transformer, vae=vae, clip_model=clip_model, clip_processor=clip_processor
    )


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

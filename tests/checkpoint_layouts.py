"""Random checkpoints in the layouts of the released files that the converters read, written without the original
code (the parity tests build them with it): a taming-transformers VQGAN state dict and a ruCLIP `pytorch_model.bin`
(OpenAI CLIP's names). The converters check every key and shape, so a layout written wrong here fails loudly."""

import torch

from hf_dalle.conversion.convert_rudalle_vqgan import _diffusers_name, vqgan_config_from_taming
from hf_dalle.models.dalle_vqgan import DalleVQGAN


WEIGHT_AND_BIAS = ("weight", "bias")
RESNET_LAYERS = ("norm1", "conv1", "norm2", "conv2", "nin_shortcut")
ATTENTION_LAYERS = ("norm", "q", "k", "v", "proj_out")


def _layer_keys(prefix: str, layers: tuple[str, ...]) -> list[str]:
    return [f"{prefix}.{layer}.{kind}".lstrip(".") for layer in layers for kind in WEIGHT_AND_BIAS]


def random_taming_vqgan_state_dict(taming_config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict of taming's `GumbelVQ` / `VQModel` for `taming_config` (the parsed YAML): every key taming
    writes for that config, the attention projections as 1x1 convolutions, as in the released checkpoints."""
    config = vqgan_config_from_taming(taming_config)
    with torch.device("meta"):
        targets = DalleVQGAN(config).state_dict()
    num_levels, blocks = len(config.block_out_channels), config.layers_per_block
    quantizer = "embed" if config.quantizer == "gumbel" else "embedding"
    candidates = [f"quantize.{quantizer}.weight", *_layer_keys("quantize", ("proj",))]
    candidates += _layer_keys("", ("quant_conv", "post_quant_conv"))
    for part, direction, level_blocks in (("encoder", "down", blocks), ("decoder", "up", blocks + 1)):
        candidates += _layer_keys(part, ("conv_in", "norm_out", "conv_out"))
        for mid_block in ("block_1", "block_2"):
            candidates += _layer_keys(f"{part}.mid.{mid_block}", RESNET_LAYERS)
        candidates += _layer_keys(f"{part}.mid.attn_1", ATTENTION_LAYERS)
        for level in range(num_levels):
            level_prefix = f"{part}.{direction}.{level}"
            candidates += _layer_keys(level_prefix, (f"{direction}sample.conv",))
            for block in range(level_blocks):
                candidates += _layer_keys(f"{level_prefix}.block.{block}", RESNET_LAYERS)
                candidates += _layer_keys(f"{level_prefix}.attn.{block}", ATTENTION_LAYERS)
    generator = torch.Generator().manual_seed(seed)
    state_dict = {}
    for key in candidates:
        name = _diffusers_name(key, num_levels)
        if name not in targets:
            continue  # a layer this config does not have (a shortcut between equal widths, attention elsewhere)
        shape = targets[name].shape
        if key.rsplit(".", 2)[-2] in ATTENTION_LAYERS[1:] and key.endswith("weight"):
            shape = (*shape, 1, 1)  # taming's attention projections are 1x1 convolutions
        state_dict[key] = 0.1 * torch.randn(shape, generator=generator)
    assert len(state_dict) == len(targets), "the taming layout above misses some of the model's parameters"
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
        **{f"visual.{norm}.{kind}": (vision_width,) for norm in ("ln_pre", "ln_post") for kind in WEIGHT_AND_BIAS},
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
                **{f"{block}.{norm}.{kind}": (size,) for norm in ("ln_1", "ln_2") for kind in WEIGHT_AND_BIAS},
            }
    return {name: 0.1 * torch.randn(shape, generator=generator) for name, shape in shapes.items()}

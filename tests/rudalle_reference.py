"""
ruDALL-E's own code (`rudalle` 1.1.3) as the reference of the ruDALL-E parity tests (marker `parity`, run in the
reference venv): random transformers built with its classes and saved as its released files are, and its
`generate_images` loop.

`rudalle.pipelines` and `rudalle.tokenizer` import, besides the model code, libraries that are gone or changed (torchvision, matplotlib,
more_itertools, transformers 4.10's `top_k_top_p_filtering`, huggingface_hub's `cached_download`); it uses none of
them on the path tested here except `top_k_top_p_filtering`, so [`import_rudalle`] puts stand-ins in
their place for the duration of a test (`monkeypatch`).
"""

import sys
import types

import torch
from reference_models import import_reference


def top_k_top_p_filtering(logits, top_k=0, top_p=1.0, filter_value=-float("inf"), min_tokens_to_keep=1):
    """transformers 4.10's `top_k_top_p_filtering` (removed since), which `generate_images` calls: keep the `top_k`
    largest logits, then the smallest set whose probabilities sum past `top_p`."""
    if top_k > 0:
        top_k = min(max(top_k, min_tokens_to_keep), logits.size(-1))
        indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
        logits[indices_to_remove] = filter_value
    if top_p < 1.0:
        sorted_logits, sorted_indices = torch.sort(logits, descending=True)
        cumulative_probs = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1)
        sorted_indices_to_remove = cumulative_probs > top_p
        if min_tokens_to_keep > 1:
            sorted_indices_to_remove[..., :min_tokens_to_keep] = 0
        sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
        sorted_indices_to_remove[..., 0] = 0
        indices_to_remove = sorted_indices_to_remove.scatter(1, sorted_indices, sorted_indices_to_remove)
        logits[indices_to_remove] = filter_value
    return logits


class DecodedImage:
    """What the torchvision stand-in's `to_pil_image` returns: the tensor it was given (`generate_images` returns one
    per image, so the test reads back the codes the stand-in VQGAN passed through)."""

    def __init__(self, tensor):
        self.tensor = tensor

    def convert(self, mode):
        return self


def import_rudalle(monkeypatch, module_name: str = "rudalle.pipelines") -> types.ModuleType:
    """`rudalle.pipelines` (or `rudalle.tokenizer`), their unused imports replaced by stand-ins (see the module
    docstring)."""
    import huggingface_hub
    import transformers

    monkeypatch.setattr(transformers, "top_k_top_p_filtering", top_k_top_p_filtering, raising=False)
    monkeypatch.setattr(huggingface_hub, "cached_download", None, raising=False)
    stand_ins = {
        "torchvision": {},
        "torchvision.transforms": {},
        "torchvision.transforms.functional": {"to_pil_image": DecodedImage},
        "more_itertools": {"chunked": lambda items, n: [list(items)[i : i + n] for i in range(0, len(items), n)]},
        "matplotlib": {},
        "matplotlib.pyplot": {},
    }
    for name, attributes in stand_ins.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    sys.modules["torchvision.transforms"].functional = sys.modules["torchvision.transforms.functional"]
    for name in ("rudalle.pipelines", "rudalle.utils", "rudalle.tokenizer"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # re-imported with this test's stand-ins
    return import_reference(module_name)


def build_rudalle_model(
    hf_version: str,
    num_layers: int = 8,
    hidden_size: int = 64,
    num_attention_heads: int = 4,
    text_seq_length: int = 16,
    image_tokens_per_dim: int = 16,
    caption_vocab_size: int = 100,
    image_vocab_size: int = 64,
    seed: int = 0,
):
    """
    A random ruDALL-E `DalleModel` (in eval mode) with every parameter perturbed (LayerNorm weights around 1, biases
    around 0, the rest scaled by fan-in) and rounded to float16, as the released weights are stored. Its
    `vocab_size` is `caption_vocab_size + text_seq_length` (the per-position pad tokens come on top), and its
    `model_params` (ruDALL-E's names, plus `hf_version`) are in `model.model_params`.
    """
    model_module = import_reference("rudalle.dalle.model")
    model_params = {
        "num_layers": num_layers,
        "hidden_size": hidden_size,
        "num_attention_heads": num_attention_heads,
        "embedding_dropout_prob": 0.1,
        "attention_dropout_prob": 0.1,
        "output_dropout_prob": 0.1,
        "text_seq_length": text_seq_length,
        "image_tokens_per_dim": image_tokens_per_dim,
        "vocab_size": caption_vocab_size + text_seq_length,
        "image_vocab_size": image_vocab_size,
        "cogview_sandwich_layernorm": True,
        "cogview_pb_relax": True,
    }
    torch.manual_seed(seed)
    model = model_module.DalleModel(device="cpu", hf_version=hf_version, **model_params)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layernorm" in name or name.startswith("to_logits.0"):
                parameter.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn_like(parameter))
            elif name.endswith("bias"):
                parameter.copy_(0.1 * torch.randn_like(parameter))
            else:
                parameter.copy_(torch.randn_like(parameter) / parameter.shape[-1] ** 0.5)
            parameter.copy_(parameter.half().float())
    model.model_params = {**model_params, "hf_version": hf_version}
    return model.eval()


def save_rudalle_checkpoint(model, path) -> None:
    """Save as the released `pytorch_model*.bin` files are: the float16 state dict of `DalleModel` (with its mask
    buffers)."""
    state_dict = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state_dict, path)


def rudalle_caption_ids(model, num_caption_tokens: int, generator: torch.Generator) -> torch.LongTensor:
    """A caption as ruDALL-E's tokenizer writes it: `[BOS=2] ids [EOS=3]`, then pads (0) to `text_seq_length`."""
    text = torch.zeros(model.text_seq_length, dtype=torch.long)
    text[0] = 2
    text[1 : num_caption_tokens + 1] = torch.randint(
        4, model.vocab_size - model.text_seq_length, (num_caption_tokens,)
    )
    text[num_caption_tokens + 1] = 3
    return text


def rudalle_generate_codes(pipelines, model, text_ids: torch.LongTensor, images_num: int = 2, **sampling):
    """ruDALL-E's `generate_images` for the caption ids `text_ids` (`[text_seq_length]`, as its tokenizer returns
    them) with its cache, through a stand-in VQGAN that returns the codes: `(codes [images_num, G * G] in ruDALL-E's
    perplexity order, perplexities)`."""

    class CodesVQGAN:
        def decode(self, codebooks):
            return codebooks

    class FixedTokenizer:
        def encode_text(self, text, text_seq_length):
            return text_ids[:text_seq_length]

    with torch.no_grad():
        images, perplexities = pipelines.generate_images(
            "", FixedTokenizer(), model, CodesVQGAN(), images_num=images_num, bs=images_num, use_cache=True, **sampling
        )
    return torch.stack([image.tensor for image in images]), torch.tensor(perplexities)

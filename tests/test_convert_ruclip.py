"""ruCLIP -> transformers CLIPModel + CLIPProcessor (hf_dalle.conversion.convert_ruclip), against the original
`ruclip` code: a small random-weight ruCLIP with its own YTTM bpe.model, saved in the released folder layout,
converted, and compared (token ids exactly, text and image features to 1e-4)."""

import json
import random
import sys
import types

import pytest
import torch
from reference_models import import_reference

from hf_dalle.conversion.convert_ruclip import convert_ruclip


RUCLIP_CONFIG = {
    "embed_dim": 32,
    "image_resolution": 32,
    "vision_layers": 2,
    "vision_width": 128,  # 2 heads of 64, as ruCLIP derives them
    "vision_patch_size": 8,
    "context_length": 12,
    "transformer_width": 64,
    "transformer_heads": 4,
    "transformer_layers": 2,
}
WORDS = ["красный", "круг", "над", "синим", "квадратом", "Кошка", "СОБАКА", "cat", "дом", "ёлка", "日本", "😀"]


def ruclip_modules(monkeypatch):
    """`ruclip.model` and `ruclip.processor`. The processor's image transform comes from torchvision, which has no
    CPU build for this torch here: a stand-in module lets the text side (what is compared) import; images are compared
    on the same pixel values."""
    try:
        import torchvision.transforms  # noqa: F401
    except Exception:
        transforms = types.ModuleType("torchvision.transforms")
        for name in ("Compose", "Lambda", "RandomResizedCrop", "ToTensor", "Normalize"):
            setattr(transforms, name, lambda *args, **kwargs: None)
        torchvision = types.ModuleType("torchvision")
        torchvision.transforms = transforms
        monkeypatch.setitem(sys.modules, "torchvision", torchvision)
        monkeypatch.setitem(sys.modules, "torchvision.transforms", transforms)
    return import_reference("ruclip.model"), import_reference("ruclip.processor")


@pytest.fixture
def ruclip_folder(tmp_path, monkeypatch):
    yttm = import_reference("youtokentome")
    model_module, processor_module = ruclip_modules(monkeypatch)
    rng = random.Random(0)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choices(WORDS, k=6)).lower() for _ in range(2000)), encoding="utf-8")
    folder = tmp_path / "ruclip"
    folder.mkdir()
    bpe = yttm.BPE.train(data=str(corpus), model=str(folder / "bpe.model"), vocab_size=120)
    config = {**RUCLIP_CONFIG, "vocab_size": bpe.vocab_size()}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    reference = model_module.CLIP(**config).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # every parameter off its initial value (LayerNorm weights off 1, biases off 0)
        for parameter in reference.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
    torch.save(reference.state_dict(), folder / "pytorch_model.bin")
    return folder, reference, processor_module.RuCLIPProcessor.from_pretrained(str(folder))


TEXTS = [
    "Красный круг над синим квадратом",
    "  кошка  ",
    "СОБАКА\tи кошка",
    "<BOS> дом",
    "ёлка 日本 😀 Ω",
    "",
    "красный круг над синим квадратом красный круг над синим квадратом дом дом",  # longer than the context
]


@pytest.mark.parity
def test_ruclip_matches_the_original(ruclip_folder):
    folder, reference, reference_processor = ruclip_folder
    model, processor = convert_ruclip(folder)
    assert model.config.text_config.eos_token_id == 3 and model.config.vision_config.num_attention_heads == 2
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters())

    ids = processor.tokenizer(TEXTS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    expected_ids = torch.stack([reference_processor.encode_text(text) for text in TEXTS])
    assert ids.tolist() == expected_ids.tolist()
    assert (ids[-1] == 3).sum() == 1 and ids[-1, -1] == 3  # the long text keeps its EOS at the end

    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        text_features = model.get_text_features(input_ids=ids).pooler_output
        image_features = model.get_image_features(pixel_values=pixels).pooler_output
        torch.testing.assert_close(text_features, reference.encode_text(expected_ids), atol=1e-4, rtol=0)
        torch.testing.assert_close(image_features, reference.encode_image(pixels), atol=1e-4, rtol=0)
        logits_per_image = model(input_ids=ids, pixel_values=pixels).logits_per_image
        torch.testing.assert_close(logits_per_image, reference(expected_ids, pixels)[0], atol=1e-4, rtol=0)

    # Saved and reloaded like any transformers model + processor.
    model.save_pretrained(folder / "converted")
    processor.save_pretrained(folder / "converted")
    reloaded = type(processor).from_pretrained(folder / "converted")
    assert torch.equal(
        reloaded.tokenizer(TEXTS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"], ids
    )


def test_incomplete_folder_raises(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"not a ruCLIP folder: it lacks \['pytorch_model.bin', 'bpe.model'\]"):
        convert_ruclip(tmp_path)


@pytest.fixture
def random_ruclip_folder(tmp_path):
    """A tiny ruCLIP folder with random weights (no reference code needed), and its config."""
    from test_convert_yttm import write_model

    from hf_dalle.testing_utils import random_ruclip_state_dict

    folder = tmp_path / "ruclip"
    folder.mkdir()
    write_model(folder / "bpe.model", {"\u2581": 4, "к": 5, "о": 6, "т": 7}, [(4, 5, 8), (6, 7, 9), (8, 9, 10)])
    config = {**RUCLIP_CONFIG, "vocab_size": 11}
    (folder / "config.json").write_text(json.dumps(config))
    torch.save(random_ruclip_state_dict(config), folder / "pytorch_model.bin")
    return folder, config


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda sd: sd.update({"transformer.resblocks.1.mlp.c_proj.weight": torch.zeros(64, 128)}),
            r"pytorch_model.bin': 'text_model.encoder.layers.1.mlp.fc2.weight' has shape \(64, 128\), but the CLIP of "
            r".*config.json' gives \(64, 256\)",
        ),
        (
            lambda sd: sd["visual.transformer.resblocks.0.ln_2.bias"].__setitem__(3, float("nan")),
            r"'vision_model.encoder.layers.0.layer_norm2.bias' holds NaN or infinite values: the file is damaged",
        ),
        (
            lambda sd: sd["logit_scale"].fill_(float("inf")),
            r"'logit_scale' holds NaN or infinite values",
        ),
        (
            lambda sd: sd.pop("visual.ln_post.bias"),
            r"does not hold the tensors of the CLIP of .*: missing \['vision_model.post_layernorm.bias'\]",
        ),
    ],
    ids=["wrong shape", "nan", "inf", "missing"],
)
def test_damaged_weights_are_refused_naming_the_tensor(random_ruclip_folder, damage, message):
    folder, _ = random_ruclip_folder
    state_dict = torch.load(folder / "pytorch_model.bin")
    damage(state_dict)
    torch.save(state_dict, folder / "pytorch_model.bin")
    with pytest.raises(ValueError, match=message):
        convert_ruclip(folder)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"vision_width": 32}, r"vision_width must be a multiple of 64 \(ruCLIP's heads\), got 32"),
        ({"transformer_heads": 0}, r"the sizes must be positive integers, got transformer_heads=0"),
        ({"embed_dim": "32"}, r"the sizes must be positive integers, got embed_dim='32'"),
        ({"transformer_heads": 3}, r"transformer_width \(64\) must be a multiple of transformer_heads \(3\)"),
        ({"mean": [0.5, "x", 0.5]}, r"mean must be 3 finite numbers"),
        # A few bytes asking for a model of terabytes: refused against the weights' shapes, before any allocation.
        ({"vocab_size": 10**10}, r"'text_model.embeddings.token_embedding.weight' has shape \(11, 64\), but the CLIP"),
        ({"transformer_layers": 10**6}, r"asks for 1000000 layers under `transformer.resblocks.`, but .* holds 2"),
    ],
)
def test_bad_configs_are_refused_before_anything_is_built(random_ruclip_folder, changes, message):
    folder, config = random_ruclip_folder
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    with pytest.raises(ValueError, match=message):
        convert_ruclip(folder)


def test_a_config_that_is_not_a_json_object_is_refused(random_ruclip_folder):
    folder, _ = random_ruclip_folder
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"config.json' is not a ruCLIP config.json: it holds a list"):
        convert_ruclip(folder)
    (folder / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config.json' is not a ruCLIP config.json \(not JSON"):
        convert_ruclip(folder)

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

"""ruDALL-E conversion: the transformer, the caption tokenizer and the converter script, checked against ruDALL-E's
own code (marker `parity`, in the reference venv) and, without it, for their errors and file layout."""

import random

import pytest
import torch
from rudalle_reference import (
    import_rudalle,
)

from hf_dalle.convert_rudalle import (
    RUDALLE_MODELS,
    rudalle_attention_types,
    rudalle_dalle_config,
    rudalle_tokenizer,
)


WORDS = "кот собака рыжий пёс красный синий дом на столе в лесу картина маслом летит над городом закат море".split()


def caption_corpus(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 9))) for _ in range(count)]


def tricky_captions(seed: int) -> list[str]:
    """Captions that exercise YTTM's and ruDALL-E's rules: case, Unicode and ASCII-control spaces (inside and at the
    ends, where Python's strip() removes them), U+2581, emoji and unknown scripts, special-token spellings, empty and
    over-long captions."""
    rng = random.Random(seed)
    pieces = WORDS + ["Кот", "ПЁС", "Red", "🐱", "猫", "<BOS>", "<EOS>", "<PAD>", "\u2581", "a", "", "123", "ёЁ"]
    spaces = [" ", "  ", "\t", "\n", "\u00a0", "\u3000", "\u2003", "\x1c", "\x0b", "\u2581"]
    captions = ["", " ", "\u3000кот\u3000", "\x1f пёс \x1c", "<BOS>", "КОТ НА СТОЛЕ", " ".join(WORDS * 4)]
    for _ in range(300):
        words = [rng.choice(pieces) for _ in range(rng.randint(1, 12))]
        caption = "".join(word + rng.choice(spaces) for word in words)
        captions.append(rng.choice(spaces) + caption if rng.random() < 0.3 else caption)
    return captions


def test_rudalle_attention_types_follow_its_layer_rule():
    assert rudalle_attention_types(8) == ["row", "column", "row", "row", "row", "column", "row", "conv"]
    assert rudalle_attention_types(24)[-1] == "conv" and rudalle_attention_types(24).count("column") == 6
    # The last layer is a column layer when the column rule picks it (ruDALL-E checks that rule first).
    assert rudalle_attention_types(6)[-1] == "column"


def test_released_model_configs():
    malevich = rudalle_dalle_config({**RUDALLE_MODELS["Malevich"].model_params, "hf_version": "v3"})
    assert (malevich.max_text_length, malevich.text_vocab_size, malevich.vocab_size) == (128, 16512, 16512 + 8192)
    assert (malevich.conv_window, malevich.image_mask_offset, malevich.hidden_act) == ("clipped", 0, "gelu_tanh")
    assert malevich.sandwich_layernorm and malevich.head_layernorm
    emojich = rudalle_dalle_config({**RUDALLE_MODELS["Emojich"].model_params, "hf_version": "v2"})
    assert (emojich.max_text_length, emojich.image_mask_offset, emojich.conv_window) == (129, 1, "torus")
    kandinsky = rudalle_dalle_config(dict(RUDALLE_MODELS["Kandinsky"].model_params))
    assert (kandinsky.num_hidden_layers, kandinsky.hidden_size, kandinsky.num_attention_heads) == (64, 3840, 60)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"num_layers": 2}, "lacks"),
        ({**RUDALLE_MODELS["Malevich"].model_params, "num_heads": 4}, "unknown keys \\['num_heads'\\]"),
        ({**RUDALLE_MODELS["Malevich"].model_params, "hf_version": "v4"}, "`hf_version` must be 'v2' or 'v3'"),
        ({**RUDALLE_MODELS["Malevich"].model_params, "vocab_size": 100}, "must exceed `text_seq_length`"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_rudalle_config_errors(params, message):
    with pytest.raises(ValueError, match=message):
        rudalle_dalle_config(params)


@pytest.mark.parity
@pytest.mark.parametrize("hf_version", ["v3", "v2"])
def test_tokenizer_gives_rudalle_ids(hf_version, tmp_path, monkeypatch):
    tokenizer_module = import_rudalle(monkeypatch, "rudalle.tokenizer")
    import youtokentome as yttm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(caption_corpus(3000, seed=0) + ["Red cat 123"]), encoding="utf-8")
    yttm.BPE.train(data=str(corpus), model=str(tmp_path / "bpe.model"), vocab_size=300, coverage=0.999)
    reference = tokenizer_module.YTTMTokenizerWrapper(yttm.BPE(model=str(tmp_path / "bpe.model")))

    text_length = 24
    params = {**RUDALLE_MODELS["Malevich"].model_params, "text_seq_length": text_length, "hf_version": hf_version}
    tokenizer = rudalle_tokenizer(tmp_path / "bpe.model", rudalle_dalle_config(params))
    captions = tricky_captions(seed=1)
    # As `generate_images` does: lowercase and strip, then [BOS] ids [EOS] cut to the text length, 0-padded; v2's
    # model puts one more BOS in front.
    expected = torch.stack([reference.encode_text(c.lower().strip(), text_seq_length=text_length) for c in captions])
    if hf_version == "v2":
        expected = torch.nn.functional.pad(expected, (1, 0), value=2)
    ids = tokenizer.encode_captions(captions)
    mismatches = [c for c, a, b in zip(captions, ids, expected) if not torch.equal(a, b)]
    assert not mismatches, f"{len(mismatches)} of {len(captions)} captions differ, e.g. {mismatches[:3]}"
    assert (expected[:, -1] != 0).any() and (expected[:, -1] != 3).any()  # some captions lost their EOS to the cut
    assert (expected == 1).any()  # and some hold unknown characters

    reloaded = type(tokenizer).from_pretrained(tokenizer.save_pretrained(tmp_path / "saved")[0].rsplit("/", 1)[0])
    assert torch.equal(reloaded.encode_captions(captions), ids)

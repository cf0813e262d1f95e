"""min-dalle 0.4.11 (PyPI `min-dalle`, in the reference venv) for the parity tests: its modules, imported without
`min_dalle.min_dalle` (whose import downloads nothing but sets torch's thread count and turns gradients off for the
whole process), and its sampling loop `MinDalle.generate_raw_image_stream`, reproduced around those modules."""

import random

import torch
from reference_models import import_reference


def min_dalle_models():
    """`min_dalle.models`: DalleBartEncoder, DalleBartDecoder, VQGanDetokenizer."""
    return import_reference("min_dalle.models")


def min_dalle_text_tokenizer(vocab: dict, merges_lines: list[str]):
    """min-dalle's TextTokenizer, given what `MinDalle.init_tokenizer` reads: the vocabulary and merges.txt's lines
    without the first and the last (`f.read().split("\\n")[1:-1]`)."""
    return import_reference("min_dalle.text_tokenizer").TextTokenizer(vocab, merges_lines)


def min_dalle_text_tokens(tokenizer, text: str, text_token_count: int = 64) -> torch.LongTensor:
    """`generate_raw_image_stream`'s text rows: `[unconditional, caption]`, `[2, 64]`: the tokens cut to 64 and
    padded with 1; the unconditional row is the first and the last token (`<s> </s>`) then pads."""
    tokens = tokenizer.tokenize(text)[:text_token_count]
    rows = torch.ones(2, text_token_count, dtype=torch.long)
    rows[0, :2] = torch.tensor([tokens[0], tokens[-1]])
    rows[1, : len(tokens)] = torch.tensor(tokens)
    return rows


@torch.no_grad()
def min_dalle_generate_codes(
    encoder,
    decoder,
    text_tokens: torch.LongTensor,
    image_count: int = 1,
    top_k: int = 256,
    supercondition_factor: float = 16.0,
    temperature: float = 1.0,
    seed: int = 0,
    num_codes: int | None = None,
) -> torch.LongTensor:
    """`MinDalle.generate_raw_image_stream`'s decoding, step for step: the encoder over the two text rows, each row
    repeated `image_count` times (unconditional rows first), an attention state of zeros, the image tokens started
    at 2**14 - 1, and `decoder.sample_tokens` at each of the 256 positions (the first `num_codes` only, if given).
    Returns `[image_count, num_codes or 256]`."""
    image_token_count = decoder.embed_positions.weight.shape[0]
    layer_count = len(decoder.layers)
    embed_count = decoder.embed_tokens.weight.shape[1]
    encoder_state = encoder.forward(text_tokens)
    expanded_indices = [0] * image_count + [1] * image_count
    text_tokens = text_tokens[expanded_indices]
    encoder_state = encoder_state[expanded_indices]
    attention_mask = text_tokens.not_equal(1)[:, None, None, :]
    attention_state = torch.zeros(layer_count, image_count * 4, image_token_count, embed_count)
    image_tokens = torch.full((image_count, image_token_count + 1), 2**14 - 1, dtype=torch.long)
    torch.manual_seed(seed)
    token_indices = torch.arange(image_token_count)
    settings = torch.tensor([temperature, top_k, supercondition_factor], dtype=torch.float32)
    for i in range(num_codes or image_token_count):
        image_tokens[:, i + 1], attention_state = decoder.sample_tokens(
            settings=settings,
            attention_mask=attention_mask,
            encoder_state=encoder_state,
            attention_state=attention_state,
            prev_tokens=image_tokens[:, [i]],
            token_index=token_indices[[i]],
        )
    return image_tokens[:, 1 : 1 + (num_codes or image_token_count)]


def perturb_(module: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Move every parameter off its initial value (LayerNorm weights off 1, biases off 0), in place."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


WORDS = (
    "a an the of on in with and cat dog avocado armchair chair comfy painting oil sunset over city skyline "
    "astronaut riding horse photo realistic watercolor of mountains lake cozy cabin snow robot playing chess"
).split()
PIECES = [
    *WORDS,
    "Avocado",
    "ARMCHAIR",
    "Café",
    "naïve",
    "Ünïcödé",
    "İstanbul",
    "straße",
    "\u212a",  # Kelvin sign: lowercases to an ASCII "k"
    "🐱",
    "👍🏽",
    "🇫🇷",
    "😀😀",
    "❤️",
    "1️⃣",
    "©",
    "猫",
    "<s>",
    "</s>",
    "<pad>",
    "<unk>",
    "Ġ",
    "don't",
    "it's",
    "(test)",
    "hello,",
    "world!",
    "semi;colon",
    "#hash",
    "100%",
    "$5.99",
    "e-mail",
    "_under_",
    "a\x00b",
    "x\x7fy",
]
SEPARATORS = [" ", " ", " ", "  ", "   ", "\t", "\n", " \t ", "\r\n", "\u00a0", "\u3000", ""]


def tricky_captions(count: int, seed: int) -> list[str]:
    """Captions that exercise min-dalle's text rules: case, accents and other non-ASCII letters, emoji (with skin
    tones, flags, keycaps, variation selectors), punctuation, special-token spellings, control characters, repeated
    spaces, tabs and newlines (which split nothing), leading and trailing spaces, empty and over-long captions."""
    rng = random.Random(seed)
    captions = ["", " ", "   ", "\t", "a", "A", "🐱", " a  b ", "\ta", "a\n", " ".join(WORDS * 3), "x " * 80]
    for _ in range(count - len(captions)):
        words = [rng.choice(PIECES) for _ in range(rng.randint(1, 14))]
        caption = "".join(word + rng.choice(SEPARATORS) for word in words)
        captions.append(rng.choice(SEPARATORS) + caption if rng.random() < 0.3 else caption)
    return captions

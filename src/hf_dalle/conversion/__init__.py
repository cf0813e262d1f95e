"""Converters of released weights into hf_dalle models, one module per source:

- `convert_openai_dvae`: OpenAI's dVAE (`encoder.pkl`, `decoder.pkl`) -> `DalleVAE`
- `convert_rudalle`: ruDALL-E's transformers (Malevich, Emojich, Surrealist XL, Kandinsky) -> `DallePipeline` folders
- `convert_rudalle_vqgan`: taming-transformers VQGANs, above all ruDALL-E's Sber VQGAN -> `DalleVQGAN`
- `convert_ruclip`: ruCLIP -> transformers `CLIPModel` + `CLIPProcessor`
- `convert_yttm`: YouTokenToMe BPE models -> `tokenizers` tokenizers
- `convert_dalle_mega`: DALL·E Mini / Mega in min-dalle's files -> `DallePipeline` folders
- `checkpoints`: reading released `torch.save` files without running code from them

Nothing is imported here: `import hf_dalle` does not load the converters, and `hf_dalle.convert_rudalle` (and the
other converter functions the package names) imports its module on first use.
"""

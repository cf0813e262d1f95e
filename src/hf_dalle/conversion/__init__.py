"""Converters of released checkpoints into hf_dalle models, one module per source. `import hf_dalle` does not import
them; `hf_dalle.convert_dalle_mega` loads its module on first use."""

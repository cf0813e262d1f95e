"""A converted tiny random DALL·E Mega for the tests (here rather than in hf_dalle.testing_utils, which sits below the
conversion layer)."""

from pathlib import Path

from hf_dalle import DallePipeline
from hf_dalle.conversion.convert_dalle_mega import convert_dalle_mega
from hf_dalle.testing_utils import tiny_dalle_bart_config, write_tiny_dalle_mega_sources


def make_tiny_dalle_bart_pipeline(folder, with_clip: bool = True, seed: int = 0, **config_overrides) -> DallePipeline:
    """A converted tiny random DALL·E Mega: [`write_tiny_dalle_mega_sources`] under `folder / "sources"` (config
    [`tiny_dalle_bart_config`] with `config_overrides`), converted (with the whole VQGAN, and the CLIP unless not
    `with_clip`) into the pipeline folder `folder / "pipeline"`, and loaded from it."""
    folder = Path(folder)
    paths = write_tiny_dalle_mega_sources(folder / "sources", tiny_dalle_bart_config(**config_overrides), seed=seed)
    convert_dalle_mega(
        folder / "pipeline",
        min_dalle_dir=paths["models_root"],
        vqgan_flax_checkpoint=paths["vqgan_flax_checkpoint"],
        clip_model=paths["clip_model"] if with_clip else None,
    )
    return DallePipeline.from_pretrained(folder / "pipeline")

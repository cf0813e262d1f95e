"""The demo model that ships inside the package, and what the command line (`hf-dalle demo`, `generate`, `serve`) and
the web app share to serve it."""

from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from .pipelines import DallePipeline

# The small pipeline trained on the procedural shapes world that ships inside the package.
DEMO_MODEL_DIR = str(Path(__file__).parent / "demo_model")

# Demo-world captions: two seen in training, two held out (drawn zero-shot); see hf_dalle.data.shapes.
DEMO_PROMPTS = (
    "a red circle",
    "a blue square below a yellow circle",
    "a green triangle",
    "a yellow circle to the left of a purple triangle",
)


def load_pipeline(model: str | None = None, device: str | None = None, dtype: str | None = None) -> "DallePipeline":
    """The pipeline in the folder or Hub repo `model`, by default the bundled demo model (with a clear error where a
    checkout lacks it), on `device` in `dtype` (names, or `None` for `hf_dalle.device_utils`' rule: the best device
    and the precision it computes fast)."""
    from .device_utils import resolve_device_and_dtype
    from .pipelines import DallePipeline

    device, dtype = resolve_device_and_dtype(device, dtype)
    model = model or DEMO_MODEL_DIR
    if model == DEMO_MODEL_DIR and not Path(DEMO_MODEL_DIR, "model_index.json").exists():
        raise SystemExit(f"The bundled demo model is missing from {DEMO_MODEL_DIR}; pass --model DIR_OR_HUB_ID.")
    return DallePipeline.from_pretrained(model, dtype=dtype).to(device)


__all__ = ["DEMO_MODEL_DIR", "DEMO_PROMPTS", "load_pipeline"]

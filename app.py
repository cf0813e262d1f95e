"""Hugging Face Space entry point: the hf_dalle web demo (README, "Web demo").

Serves the bundled demo model, or the pipeline directory / Hub id in the `HF_DALLE_MODEL` environment variable.
"""

from hf_dalle.app import LAUNCH_LIMITS, demo


if __name__ == "__main__":
    demo.launch(**LAUNCH_LIMITS)

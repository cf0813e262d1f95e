"""Hugging Face Space entry point: the hf_dalle web demo (README, "Web demo").

Serves the bundled demo model, or the pipeline directory / Hub id in the `HF_DALLE_MODEL` environment variable;
`X-Forwarded-For` is believed only from the proxies in `FORWARDED_ALLOW_IPS` (none if unset).
"""

from hf_dalle.app import demo, launch_demo


if __name__ == "__main__":
    launch_demo(demo)

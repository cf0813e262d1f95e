from hf_dalle.testing_utils import CAPTIONS, make_tiny_pipeline  # noqa: F401  (kept for older test imports)

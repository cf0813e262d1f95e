import sys

import huggingface_hub.constants
import huggingface_hub.hf_api
import pytest
from hub_server import LocalHub


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    """
    A `LocalHub` on 127.0.0.1 that huggingface_hub, and through it transformers' and diffusers' `push_to_hub` /
    `from_pretrained(repo_id)`, talk to instead of huggingface.co. Repos are created as `hf-dalle-tester/<name>`
    unless the id names a namespace; `hub_server.files(repo_id)` returns what was uploaded.
    """
    with LocalHub(tmp_path / "local_hub") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", "hf_local_hub_test_token")
        # huggingface_hub reads these when it is imported, so the environment alone comes too late.
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(
            huggingface_hub.constants,
            "HUGGINGFACE_CO_URL_TEMPLATE",
            hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        )
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # tests run with HF_HUB_OFFLINE=1
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))
        # The module-level `huggingface_hub.create_repo` / `upload_folder` (used by diffusers) belong to an HfApi
        # built at import, and transformers caches its own HfApi: point both at the local hub.
        monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", hub.endpoint)
        if "transformers.utils.hub" in sys.modules:
            monkeypatch.setattr(sys.modules["transformers.utils.hub"], "_hf_api", None)
        yield hub


@pytest.fixture(scope="module")
def loopback_hub(tmp_path_factory):
    """A `LocalHub` for subprocesses only (they get its address as HF_ENDPOINT); this process stays offline."""
    with LocalHub(tmp_path_factory.mktemp("loopback_hub")) as hub:
        yield hub

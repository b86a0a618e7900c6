"""Image size indexes built by these tests go to a temporary cache directory, not the user's."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _index_cache_dir(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FMICL_CACHE_DIR", str(tmp_path_factory.mktemp("fmicl-cache")))
        yield

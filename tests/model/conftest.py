from __future__ import annotations

import pytest

from tests.model.timmhub import go_offline


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """(HF_HOME, download attempts): see :func:`tests.model.timmhub.go_offline`."""
    return go_offline(tmp_path, monkeypatch)

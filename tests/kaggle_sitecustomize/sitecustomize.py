"""Seam B: point the kaggle client of a *subprocess* at a fake Kaggle server.

Put this directory on ``PYTHONPATH`` and set ``PODIUM_FAKE_KAGGLE_URL`` (e.g. a running
``tests/kaggle_fake.FakeKaggle().url``); the child process then sends every Kaggle API call to
that URL instead of https://api.kaggle.com. Without the variable this file does nothing.
"""

import os

_url = os.environ.get("PODIUM_FAKE_KAGGLE_URL")
if _url:
    from kagglesdk.kaggle_env import KaggleEnv, _env_to_endpoint

    _env_to_endpoint[KaggleEnv.PROD] = _url

"""The Kaggle layer: the one part of podium that talks to the official ``kaggle`` client.

Everything that reaches Kaggle goes through here, so the client's traps are handled once:

* ``import kaggle`` authenticates at import time, so it is imported lazily (``client``).
* The client is only ever pointed through the PROD entry of
  ``kagglesdk.kaggle_env._env_to_endpoint``; tests swap that entry for a loopback fake.
* kaggle 2.2.4 does not unzip, reports a failed upload as a normal return value, hides the
  page token of several listings and keeps retrying some calls for minutes. podium streams
  downloads itself (``downloader``), checks uploads and pages listings (``competitions``), and
  turns every failure into one :class:`KaggleError` line. Credentials never appear in a message,
  a log line or a file.

Modules: ``client`` (credentials, session, errors), ``competitions`` (files, submissions,
leaderboard, submit), ``downloader`` (download and unpack), ``datasets`` (push a folder as a
private dataset), ``kernels`` (code competitions: push a kernel, its status and output, submit a
kernel version), ``commands`` (the CLI commands).
"""

from podium.archives import UnpackRules
from podium.kaggle.client import KaggleCredentialsWarning, KaggleError, preflight, rules_url
from podium.kaggle.commands import (
    format_table,
    kernel_output_command,
    leaderboard_command,
    push_command,
    submissions_command,
    submit_command,
)
from podium.kaggle.competitions import (
    SubmissionFailed,
    competition_info,
    leaderboard,
    list_files,
    submissions,
    submit,
)
from podium.kaggle.datasets import push_dataset
from podium.kaggle.downloader import download, downloaded
from podium.kaggle.kernels import (
    kernel_output,
    kernel_status,
    push_kernel,
    submit_code,
    wait_for_kernel,
)

__all__ = [
    "KaggleCredentialsWarning",
    "KaggleError",
    "SubmissionFailed",
    "UnpackRules",
    "competition_info",
    "download",
    "downloaded",
    "format_table",
    "kernel_output",
    "kernel_output_command",
    "kernel_status",
    "leaderboard",
    "leaderboard_command",
    "list_files",
    "preflight",
    "push_command",
    "push_dataset",
    "push_kernel",
    "rules_url",
    "submissions",
    "submissions_command",
    "submit",
    "submit_code",
    "submit_command",
    "wait_for_kernel",
]

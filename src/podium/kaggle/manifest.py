"""What a download completed: the remote object's identity and the manifest of finished work.

``<dest>/.podium-kaggle/manifest.json`` records, per download, the remote object (size,
ETag/Last-Modified) and the files it put in place, and per member archive what it unpacked
into, so a re-run of :func:`podium.kaggle.downloader.download` skips finished work.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

__all__ = ["STATE_DIR", "Remote", "Manifest"]

STATE_DIR = ".podium-kaggle"  # inside the download dir: partial files, manifest, staging
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Remote:
    """The object a download request was answered with, as its response headers describe it."""

    url: str  # the final (post-redirect) blob URL
    size: int | None
    validator: str | None  # ETag or Last-Modified: proves a partial file is of this object
    resumable: bool
    encoded: bool  # Content-Encoding set: the byte count cannot be checked against the length

    @classmethod
    def of(cls, response: Any) -> Remote:
        headers = response.headers
        length = headers.get("Content-Length")
        return cls(
            url=response.url,
            size=int(length) if length and length.isdigit() else None,
            validator=headers.get("ETag") or headers.get("Last-Modified"),
            resumable=headers.get("Accept-Ranges") == "bytes",
            encoded=bool(headers.get("Content-Encoding")),
        )

    @property
    def served_name(self) -> str:
        return PurePosixPath(urlsplit(self.url).path).name


class Manifest:
    """What a download completed, in ``<dest>/.podium-kaggle/manifest.json``.

    ``downloads``: per download key, the remote identity (size, ETag/Last-Modified) and the
    files it put in place. ``unpacked``: per member archive (path in ``dest``), its size and the
    files it unpacked into. An archive deleted after its verified extraction still counts as
    present while everything it unpacked into is.
    """

    def __init__(self, dest: Path) -> None:
        self.path = dest / STATE_DIR / _MANIFEST
        self.dest = dest
        try:
            self.data = json.loads(self.path.read_text())
            if not isinstance(self.data.get("downloads"), dict):
                raise ValueError("no downloads")
        except (OSError, ValueError, AttributeError):
            self.data = {"version": 1, "downloads": {}}
        self.data.setdefault("unpacked", {})

    def complete_outputs(self, key: str, remote: Remote) -> list[Path] | None:
        """The outputs of ``key`` if they were fully written from this same remote object."""
        entry = self.data["downloads"].get(key)
        if not entry or entry.get("size") != remote.size:
            return None
        if entry.get("validator") != remote.validator:
            return None
        return self.local_outputs(key)

    def local_outputs(self, key: str) -> list[Path] | None:
        """The recorded outputs of ``key`` if all are still on disk with their sizes (an
        unpacked archive stands for what it unpacked into)."""
        entry = self.data["downloads"].get(key)
        return self._present(entry["files"]) if entry else None

    def unpacked_outputs(self, rel: str) -> list[Path] | None:
        """What the member archive ``rel`` unpacked into, if all of it is on disk and the
        archive (where it was kept) is the one that was unpacked."""
        entry = self.data["unpacked"].get(rel)
        archive = self.dest / rel
        if not entry or (archive.is_file() and archive.stat().st_size != entry["size"]):
            return None
        return self._present(entry["files"])

    def _present(self, files: dict[str, int]) -> list[Path] | None:
        outputs: list[Path] = []
        for rel, size in files.items():
            path = self.dest / rel
            if path.is_file() and path.stat().st_size == size:
                outputs.append(path)
                continue
            unpacked = self.unpacked_outputs(rel) if not path.exists() else None
            if unpacked is None:
                return None
            outputs.extend(unpacked)
        return outputs

    def record(self, key: str, remote: Remote, outputs: list[Path]) -> None:
        files = self._sizes(outputs)
        self.data["downloads"][key] = {
            "size": remote.size,
            "validator": remote.validator,
            "files": files,
        }
        for rel in files:  # freshly downloaded archives have not been unpacked yet
            self.data["unpacked"].pop(rel, None)
        self._save()

    def record_unpacked(self, rel: str, size: int, outputs: list[Path]) -> None:
        self.data["unpacked"][rel] = {"size": size, "files": self._sizes(outputs)}
        self._save()

    def _sizes(self, outputs: list[Path]) -> dict[str, int]:
        return {p.relative_to(self.dest).as_posix(): p.stat().st_size for p in outputs}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.path)  # atomic: never a half-written manifest

"""podium.archives: every format competitions ship, the placement rules for member archives, and
the same safety rules (unsafe entries, corrupt data: nothing extracted) in every format."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

import py7zr
import pytest

from podium.archives import (
    ArchiveError,
    CorruptArchive,
    UnpackRules,
    archive_suffix,
    extract_archive,
    unpack,
    unpack_target,
)

FILES = {"a.csv": b"id,x\n1,2\n", "images/0001.png": b"\x89PNG" + bytes(range(256)) * 8}


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_7z(path: Path, files: dict[str, bytes]) -> Path:
    with py7zr.SevenZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(data, name)
    return path


def make(kind: str, tmp: Path, files: dict[str, bytes]) -> Path:
    if kind == "zip":
        return write_zip(tmp / "x.zip", files)
    if kind == "7z":
        return write_7z(tmp / "x.7z", files)
    suffix, mode = {
        "tar": (".tar", "w"), "tar.gz": (".tar.gz", "w:gz"), "tgz": (".tgz", "w:gz"),
        "tar.bz2": (".tar.bz2", "w:bz2"), "tar.xz": (".tar.xz", "w:xz"),
    }[kind]  # fmt: skip
    return write_tar(tmp / f"x{suffix}", files, mode)


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


KINDS = ["zip", "7z", "tar", "tar.gz", "tgz", "tar.bz2", "tar.xz"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_format_extracts_exactly(kind: str, tmp_path: Path) -> None:
    archive = make(kind, tmp_path, FILES)
    out = tmp_path / "out"
    written = extract_archive(archive, out, progress=False)
    assert tree(out) == FILES
    assert sorted(p.relative_to(out).as_posix() for p in written) == sorted(FILES)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".unpack-")] == []


def test_gz_is_one_file_named_without_gz(tmp_path: Path) -> None:
    archive = tmp_path / "train.csv.gz"
    archive.write_bytes(gzip.compress(FILES["a.csv"]))
    assert unpack(archive, progress=False) == [tmp_path / "train.csv"]
    assert (tmp_path / "train.csv").read_bytes() == FILES["a.csv"]
    plain = tmp_path / "labels.gz"  # no inner extension: still one file, named "labels"
    plain.write_bytes(gzip.compress(b"xyz"))
    assert unpack(plain, progress=False) == [tmp_path / "labels"]


# -- where a member archive lands (the shapes Kaggle ships, see tests/test_download.py) -------
def test_folder_named_like_the_archive_is_not_doubled(tmp_path: Path) -> None:
    # Carvana's train.zip holds train/<id>.jpg: it lands in train/, not train/train/.
    archive = write_zip(tmp_path / "train.zip", {"train/a.jpg": b"1", "train/b.jpg": b"2"})
    assert unpack_target(archive).strip == "train"
    unpack(archive, progress=False)
    assert tree(tmp_path / "train") == {"a.jpg": b"1", "b.jpg": b"2"}


def test_root_level_entries_land_in_a_folder_named_like_the_archive(tmp_path: Path) -> None:
    # TGS Salt's train.zip holds images/ and masks/ at its root: they land in train/.
    archive = write_zip(tmp_path / "train.zip", {"images/1.png": b"i", "masks/1.png": b"m"})
    unpack(archive, progress=False)
    assert tree(tmp_path / "train") == {"images/1.png": b"i", "masks/1.png": b"m"}


def test_wrapped_csv_becomes_the_csv(tmp_path: Path) -> None:
    # Carvana and Ultrasound Nerve ship train_masks.csv.zip holding train_masks.csv.
    archive = write_zip(tmp_path / "train_masks.csv.zip", {"train_masks.csv": b"img,rle\n"})
    assert unpack(archive, progress=False) == [tmp_path / "train_masks.csv"]
    assert (tmp_path / "train_masks.csv").read_bytes() == b"img,rle\n"
    # macOS metadata next to it does not turn it into a folder.
    mac = write_zip(tmp_path / "meta.csv.zip", {"meta.csv": b"m\n", "__MACOSX/._meta.csv": b"junk"})
    assert unpack(mac, progress=False) == [tmp_path / "meta.csv"]
    assert not (tmp_path / "__MACOSX").exists()


def test_into_names_the_folder(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "stage1_train.zip", {"stage1_train/x.png": b"x"})
    unpack(archive, tmp_path / "train", progress=False)
    assert tree(tmp_path / "train") == {"stage1_train/x.png": b"x"}  # only "train/" is stripped


def test_unpack_rules() -> None:
    rules = UnpackRules({"test_hq.zip": False, "stage1_*.zip": "train"})
    assert rules.target("train.zip") is True
    assert rules.target("test_hq.zip") is False
    assert rules.target("stage1_train.zip") == "train"
    assert rules.target("train.csv") is False  # not an archive
    assert rules.target("volumes/case_01.nii.gz") is False  # data that looks like an archive
    assert UnpackRules({"volumes/*.nii.gz": True}).target("volumes/case_01.nii.gz") is True
    assert archive_suffix("x.tar.gz") == ".tar.gz" and archive_suffix(".zip") is None


# -- the same safety rules in every format ------------------------------------------------------
def unsafe_7z(tmp: Path, how: str) -> Path:
    """py7zr refuses to write unsafe names, so write a same-length placeholder into a plain
    (unencoded) header, then put the hostile name there and fix the two header CRCs."""
    path = tmp / "bad.7z"
    hostile = {"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt"}.get(how)
    with py7zr.SevenZipFile(path, "w") as archive:
        archive.set_encoded_header_mode(False)
        ok = tmp / "ok.csv"
        ok.write_bytes(b"fine")
        archive.write(ok, "ok.csv")  # (py7zr fails on a link after a writestr entry)
        if hostile is None:
            link = tmp / "link"
            os.symlink("/etc/passwd", link)  # py7zr stores it as a symbolic link entry
            archive.write(link, "link")
        else:
            archive.writestr(b"pwned", "x" * len(hostile))
    if hostile is not None:
        data = bytearray(path.read_bytes())
        placeholder = ("x" * len(hostile)).encode("utf-16-le")
        at = data.index(placeholder)
        data[at : at + len(placeholder)] = hostile.encode("utf-16-le")
        next_offset, next_size = (int.from_bytes(data[i : i + 8], "little") for i in (12, 20))
        header = data[32 + next_offset : 32 + next_offset + next_size]
        data[28:32] = zlib.crc32(header).to_bytes(4, "little")
        data[8:12] = zlib.crc32(data[12:32]).to_bytes(4, "little")
        path.write_bytes(bytes(data))
    return path


def unsafe_archive(kind: str, tmp: Path, how: str) -> Path:
    if kind == "zip":
        path = tmp / "bad.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("ok.csv", b"fine")
            if how == "link":
                info = zipfile.ZipInfo("link")
                info.external_attr = 0o120777 << 16
                zf.writestr(info, "../../etc/passwd")
            else:
                zf.writestr("../evil.txt" if how == "dotdot" else "/tmp/evil.txt", b"pwned")
        return path
    if kind == "7z":
        return unsafe_7z(tmp, how)
    path = tmp / "bad.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        ok = tarfile.TarInfo("ok.csv")
        ok.size = 4
        tf.addfile(ok, io.BytesIO(b"fine"))
        bad = tarfile.TarInfo({"dotdot": "../evil.txt", "absolute": "/tmp/evil.txt"}.get(how, "l"))
        if how == "link":
            bad.type, bad.linkname = tarfile.SYMTYPE, "../../etc/passwd"
        else:
            bad.size = 5
        tf.addfile(bad, io.BytesIO(b"pwned"))
    return path


@pytest.mark.parametrize("how", ["dotdot", "absolute", "link"])
@pytest.mark.parametrize("kind", ["zip", "7z", "tar.gz"])
def test_unsafe_entries_are_refused_whole(kind: str, how: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = unsafe_archive(kind, src, how)
    out = tmp_path / "out" / "data"
    with pytest.raises(ArchiveError, match="refusing to extract.*nothing was extracted"):
        extract_archive(archive, out, progress=False)
    assert tree(tmp_path / "out") == {}  # not even the harmless ok.csv
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def test_tar_devices_and_hard_links_are_refused(tmp_path: Path) -> None:
    for kind, linkname in ((tarfile.LNKTYPE, "ok.csv"), (tarfile.CHRTYPE, "")):
        path = tmp_path / f"t{kind!r}.tar"
        with tarfile.open(path, "w") as tf:
            info = tarfile.TarInfo("x")
            info.type, info.linkname = kind, linkname
            tf.addfile(info)
        with pytest.raises(ArchiveError, match="'x' is a"):
            extract_archive(path, tmp_path / "out", progress=False)


def corrupt(kind: str, tmp: Path) -> Path:
    big = {"a.bin": os.urandom(200_000), "b.bin": os.urandom(200_000)}
    if kind == "gz":
        path = tmp / "x.csv.gz"
        path.write_bytes(gzip.compress(big["a.bin"])[:-5000])  # truncated
        return path
    archive = make(kind, tmp, big)
    data = bytearray(archive.read_bytes())
    if kind == "zip":  # flip a byte inside the second member's data: its CRC fails
        offset = data.find(b"b.bin") + 200
        data[offset] ^= 0xFF
    else:  # cut the stream short
        data = data[: len(data) * 2 // 3]
    archive.write_bytes(bytes(data))
    return archive


@pytest.mark.parametrize("kind", ["zip", "7z", "tar.gz", "tar.xz", "gz"])
def test_corrupt_archives_leave_nothing(kind: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    archive = corrupt(kind, src)
    out = tmp_path / "out"
    with pytest.raises(ArchiveError, match=r"corrupt|not a readable"):
        unpack(archive, out, progress=False)
    assert not out.exists() or tree(out) == {}
    assert [p for p in src.iterdir() if p.name.startswith(".unpack")] == []


@pytest.mark.parametrize("kind", ["zip", "7z", "tar.gz", "tar.xz", "tar.bz2"])
def test_damaged_bytes_are_caught_in_every_format(kind: str, tmp_path: Path) -> None:
    """Bytes flipped in transit, the size unchanged: a 7z used to escape as a raw LZMAError,
    and a tar.gz passed (tarfile never reads the gzip CRC at the end of the stream)."""
    src = tmp_path / "src"
    src.mkdir()
    archive = make(kind, src, {"a.bin": os.urandom(50_000), "b.bin": b"b" * 50_000})
    data = bytearray(archive.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 8):
        data[i] ^= 0xFF
    archive.write_bytes(bytes(data))
    out = tmp_path / "out"
    with pytest.raises(CorruptArchive, match=r"x\.\S+ (is corrupt|is not a readable)"):
        unpack(archive, out, progress=False)
    assert not out.exists() or tree(out) == {}


def test_not_an_archive_is_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "train.zip"
    fake.write_bytes(b"<html>Kaggle login page</html>")
    with pytest.raises(ArchiveError, match=r"train.zip is not a readable \.zip archive"):
        unpack(fake, progress=False)


def test_progress_bar_on_request(tmp_path: Path, capsys) -> None:
    archive = make("zip", tmp_path, FILES)
    extract_archive(archive, tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    extract_archive(archive, tmp_path / "shown", progress=True)
    assert "unpacking x.zip" in capsys.readouterr().err

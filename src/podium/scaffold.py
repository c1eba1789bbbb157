"""`podium new SLUG [--kaggle]`: a new competition folder from `competitions/_template`.

The template is a working adapter for the commonest Kaggle shape (a training CSV of run-length
masks, images in folders, a sample submission) with three numbered TODOs. With `--kaggle` the
competition's file list comes from Kaggle and its `sample_submission.csv` is downloaded and read
to prefill the id and mask columns, the empty-mask token, per-class rows and file locations, and
the competition listing says whether it is a code competition.
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

from podium.config import ConfigError, compose_config
from podium.io import PodiumError
from podium.workspace import builtin_competitions, init_workspace, workspace_root

__all__ = ["init_command", "new_command", "create_competition", "infer_submission_format"]

USAGE = "usage: podium new SLUG [--kaggle] [paths.data_dir=DIR]"
TEMPLATE = "_template"
_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]*")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".dcm")
_TEMPLATE_CLASS = "CompetitionTemplate"


def new_command(args: list[str]) -> int:
    """Parse `podium new` arguments, create the folder and say what to do next."""
    if any(a in ("-h", "--help") for a in args):
        print(USAGE)
        return 0
    flags = [a for a in args if a.startswith("--")]
    overrides = [a for a in args if "=" in a and not a.startswith("-")]
    positional = [a for a in args if a not in flags and a not in overrides]
    unknown = [f for f in flags if f != "--kaggle"]
    if unknown or len(positional) != 1:
        problem = f"unknown option {unknown[0]}" if unknown else "give exactly one SLUG"
        raise ConfigError(f"podium new: {problem} ({USAGE})")
    slug = positional[0]
    prefill: dict = {}
    if "--kaggle" in flags:
        # Only `paths` matters here: drop the default competition (it may not exist).
        cfg = compose_config("tools", ["~competition", *overrides])
        data_dir = Path(cfg.paths.data_dir) / slug
        prefill = kaggle_prefill(slug, data_dir)
    folder = create_competition(slug, prefill)
    print(f"created {folder}")
    print(
        "next: fill TODO(1)-(3) in adapter.py and competition.yaml (README.md has the "
        f"checklist), then `podium validate competition={slug}` checks the adapter"
    )
    return 0


def init_command(args: list[str]) -> int:
    """`podium init [DIR]`: make DIR (default: here) a podium workspace."""
    if any(a in ("-h", "--help") for a in args) or len(args) > 1:
        print("usage: podium init [DIR]   (make DIR, default the current folder, a workspace)")
        return 0 if args and args[0] in ("-h", "--help") else 2
    folder = Path(args[0] if args else ".")
    created = init_workspace(folder)
    print(f"podium workspace: {folder.resolve()}")
    for path in created:
        print(f"  created {path.relative_to(folder.resolve())}")
    print(
        "next: podium demo (the whole loop on a generated competition), or podium new SLUG "
        "--kaggle, then podium download competition=SLUG"
    )
    return 0


def create_competition(slug: str, prefill: dict | None = None, root: Path | None = None) -> Path:
    """Copy the template to `<root>/competitions/<slug>` (root: the workspace) with its
    placeholders filled from `prefill` (see `infer_submission_format`). The folder appears whole
    or not at all."""
    if not _SLUG.fullmatch(slug):
        raise ConfigError(
            f"podium new: '{slug}' is not a valid slug (lower-case letters, digits, '-' and '_')"
        )
    competitions = (root or workspace_root()) / "competitions"
    competitions.mkdir(parents=True, exist_ok=True)
    # A workspace's own template shadows the built-in one.
    template = competitions / TEMPLATE
    template = template if template.is_dir() else builtin_competitions() / TEMPLATE
    target = competitions / slug
    if not template.is_dir():
        raise PodiumError(f"{template}: template folder not found")
    if target.exists():
        raise PodiumError(f"{target} already exists; pick another slug or remove it")
    values = _placeholders(slug, prefill or {})
    staging = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=competitions))
    try:
        for source in sorted(template.iterdir()):
            if source.is_file():
                text = source.read_text()
                for key, value in values.items():
                    text = text.replace("{{" + key + "}}", value)
                text = text.replace(_TEMPLATE_CLASS, values["class"])
                (staging / source.name).write_text(text)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _placeholders(slug: str, prefill: dict) -> dict[str, str]:
    files = prefill.get("files") or []
    listed = "\n".join(f"    {f['name']}  ({f['size']:,} bytes)" for f in files[:40])
    if len(files) > 40:
        listed += f"\n    ... and {len(files) - 40} more"
    notes = prefill.get("notes") or ["Nothing: created without --kaggle."]
    kaggle = prefill.get("kaggle")
    return {
        "slug": slug,
        "class": "".join(part.capitalize() for part in re.split(r"[-_]", slug)) or "Competition",
        "kaggle": kaggle or "null",
        "code_competition": "true" if prefill.get("code_competition") else "false",
        "kaggle_line": (
            f"Kaggle: https://www.kaggle.com/competitions/{kaggle}"
            if kaggle
            else "Local competition (no Kaggle slug)."
        ),
        "files": listed or "    TODO(1): list them",
        "class_name": "foreground",
        "id_column": prefill.get("id_column", "id"),
        "mask_column": prefill.get("mask_column", "rle_mask"),
        "order": "F",
        "empty": _yaml_string(prefill.get("empty", "")),
        "row_id": prefill.get("row_id", "{id}"),
        "train_csv": prefill.get("train_csv", "train.csv"),
        "train_image": prefill.get("train_image", "train/{id}.png"),
        "test_image": prefill.get("test_image", "test/{id}.png"),
        "notes": "\n".join(f"- {note}" for note in notes),
    }


def _yaml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# -- Kaggle -----------------------------------------------------------------------------------
def kaggle_prefill(slug: str, data_dir: Path) -> dict:
    """List the competition's files on Kaggle, download its sample submission into `data_dir`
    and infer what the template can be prefilled with."""
    from podium import kaggle

    try:
        kaggle.preflight()
        files = kaggle.list_files(slug)
        names = [f["name"] for f in files]
        sample = _pick(names, r"(^|/)sample_?submission[^/]*\.csv(\.zip)?$")
        if sample is None:
            raise PodiumError(
                f"podium new --kaggle: {slug} lists no sample submission "
                f"({len(names)} files); create it without --kaggle"
            )
        paths = kaggle.download(slug, data_dir, files=[sample])
        listed = kaggle.competition_info(slug)
    except kaggle.KaggleError as e:
        raise PodiumError(f"podium new --kaggle: {e}") from None
    csvs = [Path(p) for p in paths if str(p).endswith(".csv")]
    if not csvs:
        raise PodiumError(f"podium new --kaggle: downloading {sample} gave no CSV file")
    prefill = infer_submission_format(csvs[0])
    prefill["kaggle"] = slug
    prefill["files"] = files
    if listed is None:
        prefill["notes"].append(
            "the competition listing does not show it: set code_competition by hand"
        )
    else:
        prefill["code_competition"] = listed["code_competition"]
        if listed["code_competition"]:
            prefill["notes"].append(
                "a code competition (submissions come from notebooks only): "
                "code_competition: true; submit with podium push, then podium submit kernel="
            )
    prefill.update(_guess_layout(names))
    return prefill


def _pick(names: list[str], pattern: str) -> str | None:
    regex = re.compile(pattern, re.IGNORECASE)
    return next((n for n in sorted(names, key=len) if regex.search(n)), None)


def _guess_layout(names: list[str]) -> dict:
    """Training CSV and image path patterns from the file list (best effort)."""
    guess = {}
    train_csv = _pick(names, r"^[^/]*train[^/]*\.csv(\.zip)?$")
    if train_csv:
        guess["train_csv"] = train_csv.removesuffix(".zip")
    for split in ("train", "test"):
        image = next(
            (
                n
                for n in sorted(names)
                if n.lower().endswith(_IMAGE_EXTS)
                and split in n.lower().split("/")[0]
                and "mask" not in n.lower()
            ),
            None,
        )
        if image and "/" in image:
            folder, ext = image.rsplit("/", 1)[0], Path(image).suffix
            guess[f"{split}_image"] = f"{folder}/{{id}}{ext}"
    return guess


def infer_submission_format(path: Path, max_rows: int = 5000) -> dict:
    """What a sample submission says about the format: id and mask columns, the empty-mask
    token and per-class rows (`<image>_<class>` ids). `notes` says what was inferred (and the
    pixel count of a full-image run `1 N`) and what could not be."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [r for _, r in zip(range(max_rows), reader, strict=False) if r]
    if not header or len(header) < 2:
        raise PodiumError(f"{path}: expected a header with an id and a mask column")
    mask_index = next(
        (i for i, c in enumerate(header) if re.search(r"pixel|rle|mask|encod", c, re.I)), 1
    )
    id_index = 0 if mask_index != 0 else 1
    out: dict = {"id_column": header[id_index], "mask_column": header[mask_index]}
    notes = [f"columns `{header[id_index]}` (id), `{header[mask_index]}` (mask): {path.name}"]
    if len(header) > 2:
        notes.append(
            f"{path.name} has {len(header)} columns ({','.join(header)}): podium writes two; "
            "check the format by hand"
        )
    values = Counter(r[mask_index].strip() for r in rows if len(r) > mask_index)
    ids = [r[id_index] for r in rows if len(r) > id_index]
    common, _ = values.most_common(1)[0] if values else ("", 0)
    if len(values) == 1 and not re.fullmatch(r"\d+( \d+)+", common):
        out["empty"] = common
        notes.append(f"every mask is `{common}`: taken as the empty-mask token")
    else:
        notes.append(
            f"the placeholder masks (`{common}`) do not show the empty-mask token: TODO(3)"
        )
    run = re.fullmatch(r"1 (\d+)", common)
    if run and int(run.group(1)) >= 4096:  # not a tiny placeholder like `1 1`
        notes.append(f"a full-image run `{common}`: each image has {run.group(1)} pixels")
    per_class = _per_class_suffix(ids)
    if per_class:
        out["row_id"] = "{id}_" + per_class
        notes.append(f"ids end in a class ({per_class}): one row per image and class")
    notes.append("the RLE pixel order (F or C) cannot be read from placeholders: TODO(3)")
    out["notes"] = notes
    return out


def _per_class_suffix(ids: list[str]) -> str | None:
    """'{class_index}' or '{class_name}' when every id is `<image>_<class>` with a few classes
    repeated for every image (Severstal's `0002cc93b.jpg_1` ... `_4`)."""
    parts = [i.rsplit("_", 1) for i in ids if "_" in i]
    if not ids or len(parts) != len(ids):
        return None
    suffixes = Counter(p[1] for p in parts)
    images = Counter(p[0] for p in parts)
    if len(images) < 2 or not 1 < len(suffixes) <= 20 or set(images.values()) != {len(suffixes)}:
        return None
    if all(s.isdigit() for s in suffixes):
        return "{class_index}"
    if all(re.fullmatch(r"[A-Za-z]\w*", s) for s in suffixes):
        return "{class_name}"
    return None  # e.g. Carvana's `<car>_01.jpg`: views, not classes

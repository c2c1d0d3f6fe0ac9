"""The configs that ship with cilearn, found by name: ``cilearn run quickstart``, ``cilearn configs``.

A clone keeps them in ``configs/`` at the top of the repository (the README's ``configs/...`` paths); a wheel
carries the same files as ``cilearn/configs/`` (setup.py copies them in when the wheel is built).  Both places
are looked at, the package's first, so an installed cilearn and a clone (or an editable install) find them.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def configs_dir() -> Path | None:
    """The folder of the shipped configs: ``cilearn/configs`` in a wheel, ``configs/`` beside the package in a
    clone; None when neither is there."""
    for folder in (_PACKAGE / "configs", _PACKAGE.parent / "configs"):
        if (folder / "quickstart.yaml").is_file():
            return folder
    return None


def find_config(name: str) -> Path | None:
    """The shipped config called ``name`` (``quickstart``, ``sweeps/icarl_study_digits``, ``published/...``,
    with or without ``.yaml``, or written ``configs/quickstart.yaml``), or None."""
    folder = configs_dir()
    if folder is None or not name:
        return None
    relative = name.replace("\\", "/").removeprefix("configs/")
    for candidate in (relative, f"{relative}.yaml"):
        path = (folder / candidate).resolve()
        if path.is_file() and path.suffix == ".yaml" and folder.resolve() in path.parents:
            return path
    return None


def list_configs() -> list[tuple[str, str]]:
    """``(name, first line of its leading comment)`` of every shipped config, sweeps included."""
    folder = configs_dir()
    if folder is None:
        return []
    rows = []
    for path in sorted(folder.rglob("*.yaml")):
        name = path.relative_to(folder).with_suffix("").as_posix()
        rows.append((name, _description(path)))
    return rows


def _description(path: Path) -> str:
    """The first line of the file's leading comment ("…" when the sentence goes on)."""
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    comment = [line.lstrip("#").strip() for line in lines[:next((i for i, line in enumerate(lines)
                                                                 if not line.startswith("#")), len(lines))]]
    comment = [text for text in comment if text and not text.startswith("yaml-language-server")]
    if not comment:
        return ""
    first = comment[0]
    return first if first.endswith(".") or len(comment) == 1 else f"{first} …"

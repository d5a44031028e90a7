"""Class lists given by users: inline (``"cat,dog,sky;cloud"``), in a YAML list, or in a text file (one per line).

A class is one name or several aliases separated by ``;`` (``"sky;cloud"``: a pixel is that class when it matches
either word). Names are checked once, here: no empty list, no empty name, no name given twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .errors import DatasetError, read_text_file

__all__ = ["MAX_CLASSES", "check_class_list", "display_names", "parse_class_argument", "read_class_file"]

MAX_CLASSES = 255  # label PNGs hold 0..255, and 255 marks ignored pixels


def check_class_list(classes: Sequence[object], source: str) -> list[str]:
    """Check and normalise a class list: spaces around each alias removed, ``;`` between aliases.

    Args:
        classes: the class names in label order, aliases separated by ``;``.
        source: where the list comes from, named in errors (``"--classes 'a,b'"``, ``"dataset file x.yaml"``).

    Returns:
        ``len(classes)`` names such as ``"sky;cloud"``.

    Raises:
        DatasetError: one line: the list is empty, an entry is not text, has an empty name, repeats a name
            (case-insensitive, aliases included), or there are more than ``MAX_CLASSES`` classes.
    """
    if not classes:
        raise DatasetError(f"{source}: the class list is empty; give the class names in label order")
    normalised, seen = [], {}
    for position, item in enumerate(classes, start=1):
        if not isinstance(item, str):
            raise DatasetError(f"{source}: class {position} is {item!r}, not a name (quote it)")
        aliases = [alias.strip() for alias in item.split(";")]
        if not all(aliases):
            raise DatasetError(
                f"{source}: class {position} ({item.strip()!r}) has an empty name; ';' separates aliases of one class"
            )
        for alias in aliases:
            if alias.lower() in seen:
                raise DatasetError(
                    f"{source}: {alias!r} is given twice (classes {seen[alias.lower()]} and {position}); every "
                    "class and alias name must be unique"
                )
            seen[alias.lower()] = position
        normalised.append(";".join(aliases))
    if len(normalised) > MAX_CLASSES:
        raise DatasetError(f"{source}: {len(normalised)} classes; at most {MAX_CLASSES} fit in a label PNG")
    return normalised


def read_class_file(path: Path) -> list[str]:
    """The classes of a text file, one per line in label order (class ``i`` on line ``i + 1``), checked.

    Trailing empty lines are allowed; an empty line before the last class is an empty name (an error).

    Raises:
        FileNotFoundError: no such file.
        DatasetError: not UTF-8 text, or see :func:`check_class_list`.
    """
    if not path.is_file():
        raise FileNotFoundError(f"class file not found: {path}")
    lines = read_text_file(path, "class file").splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return check_class_list(lines, f"class file {path} (class N on line N)")


def parse_class_argument(value: str) -> list[str]:
    """``--classes``: a comma-separated list (``"cat,dog,sky;cloud"``), or the path of a class file."""
    if Path(value).is_file():
        return read_class_file(Path(value))
    if not value.strip():
        raise DatasetError('--classes is empty: give comma-separated class names, e.g. --classes "cat,dog,sky;cloud"')
    return check_class_list(value.split(","), f"--classes {value!r}")


def display_names(classes: Sequence[str]) -> list[str]:
    """Name of each class in tables and legends: its first alias (``"sky;cloud"`` -> ``"sky"``)."""
    return [name.split(";")[0] for name in classes]

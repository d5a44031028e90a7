"""Your own labelled dataset, described by one small YAML file (docs/datasets.md, section 'Your own dataset').

::

    name: mydata                  # its key in tables, results and output folders
    images: images                # image folder, relative to this file (relative_to: data_root for data_root)
    labels: masks                 # label folder, the same sub-folders and names as the images
    image_suffix: .jpg            # default .jpg
    label_suffix: .png            # default .png
    split: val.txt                # optional: image names (no suffix, sub-folders allowed), one per line
    classes: classes.txt          # a list, or a text file beside this one with one class per line
    ignore_index: 255             # label value of unlabelled pixels (default 255)
    reduce_zero_label: false      # true: label 0 is ignored and label i is class i - 1
    palette: [[0, 0, 0], [128, 0, 0]]   # optional: RGB labels, colour i -> label value i (or {value: colour})

A file is found by its path (``--dataset path/to/mydata.yaml``) or by its name in the user dataset folder
(``$LPOSS_DATASETS``, default ``~/.config/lposs/datasets/<name>.yaml``). Each problem of a file is one line
naming it (:class:`DatasetError`); the labels themselves are checked by :mod:`lposs.datasets.labels`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from .class_lists import check_class_list, display_names, read_class_file
from .errors import DatasetError, read_text_file

__all__ = ["DatasetFile", "load_dataset_file", "resolve_dataset_file", "user_dataset_folder"]

USER_FOLDER_ENV = "LPOSS_DATASETS"
_REQUIRED = ("name", "images", "labels", "classes")
_DEFAULTS = {
    "relative_to": "file",
    "image_suffix": ".jpg",
    "label_suffix": ".png",
    "split": None,
    "ignore_index": 255,
    "reduce_zero_label": False,
    "palette": None,
}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a folder name under --output on every system
_MAX_LABEL_VALUE = 65535  # 16-bit label PNGs
_REGISTERED: dict[str, DatasetFile] = {}  # name -> the file last resolved under it (class_names, build_dataset)

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class DatasetFile:
    """A dataset file, checked. Paths are as written in the file; :meth:`base` says what they are relative to."""

    name: str
    source: Path  # the YAML file (absolute)
    images: str
    labels: str
    relative_to: str  # "file" or "data_root"
    image_suffix: str
    label_suffix: str
    split: str | None
    classes: tuple[str, ...]  # in label order, aliases separated by ';'
    ignore_index: int
    reduce_zero_label: bool
    palette: dict[int, Colour] | None  # label value -> colour of RGB labels

    def base(self, data_root: str | Path) -> Path:
        """The folder ``images``, ``labels`` and ``split`` are relative to."""
        return self.source.parent if self.relative_to == "file" else Path(data_root)

    def class_names(self, aliases: bool = True) -> list[str]:
        """The classes in label order: prompts with ``;`` aliases, or (``aliases=False``) each one's first name."""
        return list(self.classes) if aliases else display_names(self.classes)

    def class_values(self) -> range:
        """The label values that are classes: ``0..C-1``, or ``1..C`` with ``reduce_zero_label``."""
        first = 1 if self.reduce_zero_label else 0
        return range(first, first + len(self.classes))


class _RepeatedKey(Exception):
    def __init__(self, key: object, first: int, second: int) -> None:
        where = f"line {first}" if first == second else f"lines {first} and {second}"
        super().__init__(f"key {key!r} is given twice ({where}); give each key once")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader refusing a mapping that repeats a key (SafeLoader keeps the last value silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<' merges may override: not a repeat
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _RepeatedKey(key, lines[key], line)
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                break
            lines[key] = line
        return super().construct_mapping(node, deep)


def user_dataset_folder() -> Path:
    """Where ``--dataset NAME`` looks for ``NAME.yaml``: ``$LPOSS_DATASETS``, else ``~/.config/lposs/datasets``."""
    if os.environ.get(USER_FOLDER_ENV):
        return Path(os.environ[USER_FOLDER_ENV]).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(config_home) / "lposs" / "datasets"


def _fail(source: Path, message: str) -> DatasetError:
    return DatasetError(f"dataset file {source}: {message}")


def _text(source: Path, values: dict, key: str, optional: bool = False) -> str | None:
    value = values[key]
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(source, f"{key} must be a non-empty text, got {value!r}")
    return value.strip()


def _classes(source: Path, value: object) -> tuple[str, ...]:
    if isinstance(value, str):  # a class file, relative to the dataset file
        path = Path(value).expanduser()
        return tuple(read_class_file(path if path.is_absolute() else source.parent / path))
    if not isinstance(value, list):
        raise _fail(source, f"classes must be a list of names or a class file's path, got {value!r}")
    return tuple(check_class_list(value, f"dataset file {source}, classes"))


def _colour(source: Path, value: object, where: str) -> Colour:
    ok = isinstance(value, (list, tuple)) and len(value) == 3
    if not ok or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value):
        raise _fail(source, f"palette {where} is {value!r}; expected [r, g, b] with values in 0..255")
    return (int(value[0]), int(value[1]), int(value[2]))


def _palette(source: Path, value: object, num_values: int) -> dict[int, Colour] | None:
    """``[[r, g, b], ...]`` (colour i -> label value i) or ``{value: [r, g, b]}``; colours unique."""
    if value is None:
        return None
    if isinstance(value, list):
        if len(value) < num_values:
            raise _fail(source, f"palette has {len(value)} colours for {num_values} label values of classes")
        value = dict(enumerate(value))
    if not isinstance(value, dict) or not value:
        raise _fail(source, f"palette must be a list of [r, g, b] or a mapping value -> [r, g, b], got {value!r}")
    palette: dict[int, Colour] = {}
    for label, colour in value.items():
        if not isinstance(label, int) or not 0 <= label <= _MAX_LABEL_VALUE:
            raise _fail(source, f"palette label value {label!r} is not an integer in 0..{_MAX_LABEL_VALUE}")
        palette[label] = _colour(source, colour, f"entry {label}")
    colours = list(palette.values())
    twice = next((c for c in colours if colours.count(c) > 1), None)
    if twice is not None:
        raise _fail(source, f"palette colour {list(twice)} is given for two label values")
    return palette


def _checked(source: Path, values: dict) -> DatasetFile:
    name = _text(source, values, "name")
    if not _NAME.fullmatch(name):
        raise _fail(source, f"name {name!r} must be letters, digits, '_', '-' or '.' (it names output folders)")
    relative_to = values["relative_to"]
    if relative_to not in ("file", "data_root"):
        raise _fail(source, f"relative_to must be 'file' or 'data_root', got {relative_to!r}")
    ignore, reduce = values["ignore_index"], values["reduce_zero_label"]
    if not isinstance(ignore, int) or isinstance(ignore, bool) or not 0 <= ignore <= _MAX_LABEL_VALUE:
        raise _fail(source, f"ignore_index must be an integer in 0..{_MAX_LABEL_VALUE}, got {ignore!r}")
    if not isinstance(reduce, bool):
        raise _fail(source, f"reduce_zero_label must be true or false, got {reduce!r}")
    classes = _classes(source, values["classes"])
    texts = {key: _text(source, values, key) for key in ("images", "labels", "image_suffix", "label_suffix")}
    split = _text(source, values, "split", optional=True)
    spec = DatasetFile(
        name,
        source,
        **texts,
        relative_to=relative_to,
        split=split,
        classes=classes,
        ignore_index=ignore,
        reduce_zero_label=reduce,
        palette=None,
    )
    if ignore in spec.class_values():
        values_text = f"{spec.class_values()[0]}..{spec.class_values()[-1]}"
        raise _fail(
            source,
            f"ignore_index {ignore} is a class: label values {values_text} are the {len(classes)} classes"
            f"{' (reduce_zero_label)' if reduce else ''}; give a value outside them (255 is the default)",
        )
    return replace(spec, palette=_palette(source, values["palette"], spec.class_values().stop))


def load_dataset_file(path: str | Path) -> DatasetFile:
    """Read and check a dataset file (format: the module docstring).

    Raises:
        FileNotFoundError: no such file, or its class file is missing.
        DatasetError: one line naming the file: not UTF-8, not YAML, a key given twice, an unknown or missing
            key, a bad value, an empty or repeated class name, an ignore index that is a class.
    """
    source = Path(path).expanduser().absolute()
    if not source.is_file():
        raise FileNotFoundError(f"dataset file not found: {source}")
    text = read_text_file(source, "dataset file")
    try:
        values = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise _fail(source, f"not valid YAML ({' '.join(str(error).split())})") from None
    except _RepeatedKey as error:
        raise _fail(source, str(error)) from None
    if not isinstance(values, dict):
        raise _fail(source, "expected a mapping of keys to values (name: ..., images: ..., ...)")
    unknown = sorted(set(values) - set(_REQUIRED) - set(_DEFAULTS), key=str)
    if unknown:
        raise _fail(source, f"unknown key {unknown[0]!r}; valid keys: {', '.join([*_REQUIRED, *_DEFAULTS])}")
    missing = [key for key in _REQUIRED if key not in values]
    if missing:
        raise _fail(source, f"missing key {missing[0]!r} (required: {', '.join(_REQUIRED)})")
    return _checked(source, {**_DEFAULTS, **values})


def resolve_dataset_file(token: str) -> DatasetFile | None:
    """The dataset file ``token`` names, loaded and remembered under its name; None when it names none.

    ``token`` is a path ending in ``.yaml`` / ``.yml``, a name resolved before in this process, or the name of a
    file in :func:`user_dataset_folder`.

    Raises:
        FileNotFoundError, DatasetError: as :func:`load_dataset_file`.
    """
    if token.endswith((".yaml", ".yml")):
        spec = load_dataset_file(token)
    elif token in _REGISTERED:
        return _REGISTERED[token]
    else:
        folder = user_dataset_folder()
        found = [folder / f"{token}{suffix}" for suffix in (".yaml", ".yml") if (folder / f"{token}{suffix}").is_file()]
        if not found:
            return None
        spec = load_dataset_file(found[0])
    _REGISTERED[spec.name] = spec
    return spec

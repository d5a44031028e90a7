"""Configs: the YAML files in ``configs/`` composed by Hydra, typed by a schema, range-checked; sweep grids.

``load_config("lposs_plus.yaml", ["k=200", "model.clip.pretrained=null"])`` composes the file through Hydra's
compose API (its ``defaults`` list: ``lposs_plus.yaml`` is ``lposs.yaml`` plus one line) with Hydra's override
grammar, merges the result onto the typed schema of ``evaluation/config_schema.py`` and checks every value's
range. Hydra is only used as a library here: it does not change the working directory, create ``outputs/``
folders or configure logging. Any bad key, type or value raises :class:`ConfigError` with one line naming the
key, the value and what was expected.

``expand_sweep(["k=100,200", "alpha=0.9,0.95"])`` expands Hydra's multirun syntax into one plain override list
per grid point, in the order of Hydra's basic sweeper.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    OmegaConfBaseException,
)

from .config_schema import LPOSSConfig

__all__ = [
    "CONFIG_DIR",
    "ConfigError",
    "apply_dataset_values",
    "expand_sweep",
    "load_config",
    "resolve_config_path",
    "sweep_parameters",
    "validate_config",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
_HYDRA_LOCK = threading.Lock()  # Hydra keeps one global state per process: one composition at a time
CLIP_HEADS = ("maskclip", "sclip", "clearclip", "naclip", "proxyclip")
DINO_FEATURES = ("v", "k", "q", "x")
# the class-name sources of `class_names` (datasets.method_class_names.CLASS_NAME_SOURCES; not imported here)
CLASS_NAME_SOURCES = ("lposs", "sclip", "clearclip", "proxyclip")
_OVERRIDE_FORM = "key=value (e.g. k=200, model.clip.pretrained=null, data_root='/my data')"


class ConfigError(ValueError):
    """A config file, key or value that cannot be used."""


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, else the same name inside the package's ``configs/`` (``lposs/configs/``).

    ``configs/lposs.yaml``, the path from before the configs moved into the package, still names the same file.
    """
    path = Path(name)
    if path.is_file():
        return path
    if path.parts[:1] == ("configs",) and len(path.parts) > 1 and not path.is_absolute():
        path = Path(*path.parts[1:])
    if (CONFIG_DIR / path).is_file():
        return CONFIG_DIR / path
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(
        f"config file {str(name)!r} not found (neither as a path nor in {CONFIG_DIR}); available: {available}"
    )


def load_config(name: str | Path, overrides: Sequence[str] = (), dataset: str | None = None) -> DictConfig:
    """Compose a config file with Hydra, apply overrides in Hydra's grammar, type- and range-check every value.

    Args:
        name: a file name in ``configs/`` (``"lposs_plus.yaml"``) or a path anywhere; its ``defaults`` list may
            name the files of ``configs/`` (``defaults: [lposs, _self_]``).
        overrides: ``key=value`` strings, Hydra's override grammar; one value per key (no sweeps).
        dataset: the dataset key the run evaluates: its ``per_dataset`` entry, if any, replaces those values
            (a key given in ``overrides`` keeps the override's value).

    Returns:
        The typed config (schema ``LPOSSConfig``, struct mode: unknown keys and wrong types raise on assignment).

    Raises:
        ConfigError: missing file, unparsable override, unknown key, wrong type, value out of range.
    """
    config = _compose_typed(resolve_config_path(name).resolve(), overrides)
    if dataset is not None:
        given = {override.get_key_element() for override in _parse_overrides(overrides)}
        apply_dataset_values(config, dataset, skip=given)
    validate_config(config)
    return config


def apply_dataset_values(config: DictConfig, dataset: str, skip: set[str] | frozenset[str] = frozenset()) -> None:
    """Set the values of ``config.per_dataset[dataset]`` (an own-protocol config's table) in place, but ``skip``'s.

    Raises:
        ConfigError: an entry that is not a mapping, or a key or value that the schema refuses.
    """
    entry = config.per_dataset.get(dataset)
    if entry is None:
        return
    if not isinstance(entry, DictConfig):
        raise ConfigError(f"config value per_dataset.{dataset}={entry!r} is invalid: expected a mapping key: value")
    for key, value in entry.items():
        if key == "per_dataset" or not _in_schema(str(key)):
            raise ConfigError(f"config key per_dataset.{dataset}.{key}: unknown config key {key!r}")
        if key in skip:
            continue
        try:
            OmegaConf.update(config, str(key), value, merge=False)
        except OmegaConfBaseException:
            raise ConfigError(
                f"config value per_dataset.{dataset}.{key}={value!r} is invalid: expected {_expected(str(key))}"
            ) from None


def _parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Hydra's parse of each override; a syntax error names the override it is in."""
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except HydraException as error:
            lines = [line for line in str(error).splitlines() if not line.startswith("Error parsing override")]
            reason = lines[0].split(" expecting ")[0].strip() if lines else "syntax error"
            raise ConfigError(f"override {text!r} cannot be parsed ({reason}): expected {_OVERRIDE_FORM}") from None
        if not override.key_or_group:
            raise ConfigError(f"override {text!r} has no key: expected {_OVERRIDE_FORM}")
        if override.is_hydra_override():  # Hydra's own settings (hydra.run.dir...) have no effect here
            raise ConfigError(
                f"unknown config key {override.key_or_group!r}: this toolkit's configs have no hydra section"
            )
        parsed.append(override)
    return parsed


@contextmanager
def _hydra_config_dir(config_dir: Path) -> Iterator[None]:
    """Hydra initialised on ``config_dir`` for one composition; an enclosing Hydra app's state is restored."""
    with _HYDRA_LOCK:
        outer = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
                yield
        finally:  # initialize_config_dir restores a copy of the singleton: look it up again
            GlobalHydra.instance().clear()
            if outer is not None:
                GlobalHydra.instance().initialize(outer)


def _quoted(text: str) -> str:
    """``text`` as a single-quoted value of Hydra's override grammar."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose_typed(path: Path, overrides: Sequence[str]) -> DictConfig:
    """Compose ``path`` (a ``.yaml`` file) with ``overrides`` and merge it onto the schema; no range checks."""
    if path.suffix != ".yaml":
        raise ConfigError(f"config file {str(path)!r} must be a .yaml file (Hydra's config format)")
    for override in _parse_overrides(overrides):
        if override.is_sweep_override():
            raise ConfigError(
                f"override {override.input_line!r} is a sweep over several values; a single config takes one value "
                "per key (expand the grid with expand_sweep; quote a string that contains commas: key='a,b')"
            )
    try:
        config = _compose_onto_schema(path, overrides)
    except ConfigError:
        raise
    except yaml.YAMLError as error:
        raise ConfigError(f"cannot parse a YAML file of config {str(path)!r}: {' '.join(str(error).split())}") from None
    except RecursionError:  # Hydra does not detect a cycle in defaults lists
        raise ConfigError(f"config file {str(path)!r} includes itself through its defaults list") from None
    except (HydraException, OmegaConfBaseException, ValueError) as error:  # Hydra raises ValueError for some input
        raise ConfigError(_explain(error, path)) from None
    missing = sorted(OmegaConf.missing_keys(config))
    if missing:
        raise ConfigError(
            f"config key {missing[0]!r} has no value in {str(path)!r}: set it, or start the file with "
            "`defaults: [lposs, _self_]` to take lposs.yaml's values"
        )
    return config


def _compose_onto_schema(path: Path, overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition of ``path`` and ``overrides``, merged onto ``LPOSSConfig``, interpolations resolved."""
    search = [] if path.parent == CONFIG_DIR else [f"hydra.searchpath=[{_quoted(f'file://{CONFIG_DIR}')}]"]
    with _hydra_config_dir(path.parent):
        composed = compose(config_name=path.stem, overrides=[*search, *overrides])
    if "_base_" in composed:
        raise ConfigError(
            f"config file {str(path)!r} uses _base_, which Hydra configs replace by a defaults list: "
            "write `defaults: [lposs, _self_]`"
        )
    schema = OmegaConf.structured(LPOSSConfig)
    _check_sections(schema, composed)
    config = OmegaConf.merge(schema, composed)
    OmegaConf.resolve(config)  # interpolations (stride=${crop}) become values: the saved config is what ran
    return config


def _check_sections(schema: DictConfig, composed: DictConfig, prefix: str = "") -> None:
    """Reject a value where the schema has a section (OmegaConf's merge error would not name the key)."""
    for key, value in composed.items():
        if isinstance(schema.get(key), DictConfig):
            if not isinstance(value, DictConfig):
                raise ConfigError(f"config key {prefix + str(key)!r} is a section, not a value; got {value!r}")
            _check_sections(schema[key], value, prefix=f"{prefix}{key}.")


def _explain(error: Exception, path: Path) -> str:
    """One line for a Hydra or OmegaConf error: the key, the value and what is expected."""
    cause = error.__cause__ if isinstance(error.__cause__, OmegaConfBaseException) else error
    key = getattr(cause, "full_key", None)
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and key:
        if _in_schema(key):  # a valid key that the file does not set: Hydra can only override what is there
            return (
                f"config key {key!r} cannot be overridden: {str(path)!r} does not set it; start the file with "
                "`defaults: [lposs, _self_]` to take lposs.yaml's values (or set the key in the file)"
            )
        return f"unknown config key {key!r}; valid keys here: {_valid_keys_near(key)}"
    if isinstance(cause, InterpolationResolutionError) and key:
        return f"config value {key} cannot be resolved: {str(cause).splitlines()[0]}"
    if isinstance(cause, OmegaConfBaseException) and key:
        return f"config value {key}={cause.value!r} is invalid: expected {_expected(key)}"
    first_line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    if isinstance(error, MissingConfigException):  # a defaults list entry that is no file
        first_line += f" (looked in {path.parent} and {CONFIG_DIR})"
    return f"cannot compose config {str(path)!r}: {first_line}"


def _in_schema(full_key: str) -> bool:
    *parents, last = full_key.split(".")
    schema = OmegaConf.structured(LPOSSConfig)
    section = OmegaConf.select(schema, ".".join(parents)) if parents else schema
    return isinstance(section, DictConfig) and last in section.keys()  # keys(): MISSING values included


def _valid_keys_near(full_key: str) -> str:
    """The schema's keys in the deepest existing section on the way to ``full_key``."""
    schema = OmegaConf.structured(LPOSSConfig)
    parts = full_key.split(".")[:-1]
    while parts and not isinstance(OmegaConf.select(schema, ".".join(parts)), DictConfig):
        parts.pop()
    section = OmegaConf.select(schema, ".".join(parts)) if parts else schema
    prefix = "".join(f"{part}." for part in parts)
    return ", ".join(f"{prefix}{key}" for key in section.keys())


def _expected(full_key: str) -> str:
    """What a key accepts, in words: the range rule's text, else its type in the schema."""
    if full_key in _RULES:
        return _RULES[full_key][1]
    return {
        "model.clip.pretrained": "a pretrained tag, a local path or null",
        "model.dino.pretrained": "true, a local path or null",
        "model.clip.tokenizer": "a local Hugging Face tokenizer folder or null",
        "wandb.project": "a W&B project name",
        "wandb.entity": "a W&B entity name or null",
    }.get(full_key, "a value of the type in evaluation/config_schema.py")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# key -> (check, what is expected)
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "patch_propagation": (lambda v: isinstance(v, bool), "true or false"),
    "pixel_refine": (lambda v: isinstance(v, bool), "true or false"),
    "short_side": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "long_side": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    # 0 or a multiple of both backbones' patch sizes: checked with the model names (models.check_crop)
    "crop": (
        lambda v: _is_int(v) and v >= 0,
        "an integer >= 0 (0: the whole image; else a multiple of both patch sizes)",
    ),
    "stride": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "window_batch": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "k": (lambda v: _is_int(v) and v > 0, "an integer >= 1"),
    "gamma": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "sigma": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "pix_dist_pow": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "alpha": (lambda v: _is_number(v) and 0 < v < 1, "a number in the open interval (0, 1)"),
    "knn_backend": (lambda v: v in ("torch", "faiss"), "torch or faiss"),
    "tau": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "r": (lambda v: _is_int(v) and v >= 3 and v % 2 == 1, "an odd integer >= 3"),
    "pixel_backend": (lambda v: v in ("auto", "triton", "torch"), "auto, triton or torch"),
    "tol": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "maxiter": (lambda v: _is_int(v) and v > 0, "an integer >= 1"),
    "seed": (_is_int, "an integer"),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "dist_timeout": (lambda v: _is_number(v) and v > 0, "a number of seconds > 0"),
    "data_root": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "device": (
        lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda|cuda:\d+", v) is not None,
        "auto, cpu, cuda or cuda:N (N a GPU index)",
    ),
    "strict_float32": (lambda v: isinstance(v, bool), "true or false"),
    "model.dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "model.templates": (lambda v: v in ("imagenet80", "single"), "imagenet80 or single"),
    "model.clip.name": (lambda v: isinstance(v, str) and v != "", "an open_clip model name"),
    # the choices of models.CLIP_HEADS and models.DINO_FEATURES (not imported: configs load without torch)
    "model.clip.head": (lambda v: v in CLIP_HEADS, "one of " + ", ".join(CLIP_HEADS)),
    "model.dino.features": (lambda v: v in DINO_FEATURES, "one of " + ", ".join(DINO_FEATURES)),
    "model.clip.proxy_features": (lambda v: v in DINO_FEATURES, "one of " + ", ".join(DINO_FEATURES)),
    "model.clip.proxy_beta": (_is_number, "a number"),
    "model.clip.pos_interpolation": (lambda v: v in ("size", "offset"), "size or offset"),
    "model.clip.proxy_gamma": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "model.dino.name": (lambda v: isinstance(v, str) and v != "", "a timm model name"),
    "wandb.mode": (lambda v: v in ("online", "offline", "disabled"), "online, offline or disabled"),
    "class_names": (lambda v: v in CLASS_NAME_SOURCES, "one of " + ", ".join(CLASS_NAME_SOURCES)),
    "class_files_dir": (lambda v: v is None or (isinstance(v, str) and v != ""), "null or a folder path"),
    "logit_scale": (lambda v: v is None or (_is_number(v) and v > 0), "null or a number > 0"),
    "pamr_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "pamr_dilations": (
        lambda v: v is not None and len(v) > 0 and all(_is_int(d) and d > 0 for d in v),
        "a non-empty list of integers > 0",
    ),
    "area_thd": (lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "null or a number in [0, 1]"),
    "prob_thd": (lambda v: v is None or _is_number(v), "null or a number"),
    "background": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (a class index)"),
}


def validate_config(config: DictConfig) -> None:
    """Check every known key's value and the cross-key constraints; raise :class:`ConfigError` on the first bad one."""
    _check_values(config)
    _check_consistency(config)


def _check_values(config: DictConfig) -> None:
    """Each key on its own (independent of the other keys)."""
    for key, (check, expected) in _RULES.items():
        value = OmegaConf.select(config, key, default=None)
        if not check(value):
            raise ConfigError(f"config value {key}={value!r} is invalid: expected {expected}")


def _check_consistency(config: DictConfig) -> None:
    """Constraints between keys."""
    if config.crop > 0 and config.stride > config.crop:  # crop=0, the whole image: stride unused
        raise ConfigError(f"config value stride={config.stride} is invalid: expected at most crop={config.crop}")
    for dataset, entry in config.per_dataset.items():
        if not isinstance(entry, DictConfig):
            raise ConfigError(f"config value per_dataset.{dataset}={entry!r} is invalid: expected a mapping key: value")
        for key in entry:
            if key == "per_dataset" or not _in_schema(str(key)):
                raise ConfigError(f"config key per_dataset.{dataset}.{key}: unknown config key {key!r}")
    if config.class_files_dir is not None and config.class_names == "lposs":
        raise ConfigError(
            f"config value class_files_dir={config.class_files_dir!r} needs class_names set to the authors' files it holds "
            f"({', '.join(CLASS_NAME_SOURCES[1:])}); class_names=lposs uses this toolkit's own lists"
        )
    if config.area_thd is not None and config.logit_scale is None:
        raise ConfigError(
            f"config value area_thd={config.area_thd} needs logit_scale (it applies to class probabilities); "
            "set logit_scale, e.g. logit_scale=40"
        )
    if config.long_side < config.short_side:
        raise ConfigError(
            f"config value long_side={config.long_side} is invalid: expected >= short_side={config.short_side}"
        )


def _grid_axes(overrides: Sequence[str]) -> dict[str, tuple[Override, list[str]]]:
    """Hydra BasicSweeper's axes: key -> (its last override, its ``key=value`` options), in first-seen key order."""
    axes: dict[str, tuple[Override, list[str]]] = {}
    for override in _parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            options = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            options = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise ConfigError(
                f"override {override.input_line!r} is a continuous interval: a grid needs listed values "
                "(key=a,b,c), range(start,stop,step) or choice(a,b)"
            )
        axes[key] = (override, options)  # a repeated key keeps its first position and its last value, as in Hydra
    return axes


def expand_sweep(overrides: Sequence[str], config: str | Path | None = None, *, check: bool = True) -> list[list[str]]:
    """Every point of the grid that Hydra's multirun syntax defines, each checked before it is returned.

    ``["k=100,200", "alpha=0.9,0.95", "device=cpu"]`` -> ``[["k=100", "alpha=0.9", "device=cpu"],
    ["k=100", "alpha=0.95", "device=cpu"], ["k=200", "alpha=0.9", "device=cpu"], ...]``: the cartesian product in
    Hydra BasicSweeper's order (the last key varies fastest); ``range(...)`` and ``choice(...)`` sweeps too. A
    quoted comma (``data_root='a,b'``) and a list (``key=[1,2]``) are single values.

    Args:
        overrides: Hydra overrides, some of them sweeps.
        config: the config the grid applies to; each point is then checked completely by ``load_config``. Without
            it each point is checked against ``lposs.yaml`` key by key (types, ranges), not across keys.
        check: False skips the checks, for callers that load every point themselves.

    Returns:
        One plain override list per grid point (a single point when nothing sweeps).

    Raises:
        ConfigError: an unparsable override, an interval sweep, or a grid point with a bad key or value.
    """
    axes = _grid_axes(overrides)
    grid = [list(point) for point in itertools.product(*(options for _, options in axes.values()))]
    for point in grid if check else []:
        try:
            if config is None:
                _check_values(_compose_typed(CONFIG_DIR / "lposs.yaml", point))
            else:
                load_config(config, point)
        except ConfigError as error:
            raise ConfigError(f"{error} (sweep point: {' '.join(point)})") from None
    return grid


def sweep_parameters(overrides: Sequence[str]) -> list[str]:
    """The keys that take more than one value in the grid of ``overrides`` (table columns), in order.

    ``["k=100,200", "alpha=0.9", "tau=0.01,0.02"]`` -> ``["k", "tau"]``.
    """
    return [override.key_or_group for override, options in _grid_axes(overrides).values() if len(set(options)) > 1]

"""Loading, overriding and checking the YAML configs in ``configs/``.

A config may name a ``_base_`` file (relative to itself) that it is merged onto, so that
``lposs_plus.yaml`` is ``lposs.yaml`` plus one line. ``key=value`` overrides use dotted keys
(``model.clip.pretrained=null``); values are parsed as YAML. Unknown keys and out-of-range values raise
:class:`ConfigError` naming the key, the value and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

__all__ = ["CONFIG_DIR", "ConfigError", "load_config", "resolve_config_path", "validate_config"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A config file, key or value that cannot be used."""


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, else the same name inside ``configs/``."""
    path = Path(name)
    if path.is_file():
        return path
    if (CONFIG_DIR / path).is_file():
        return CONFIG_DIR / path
    available = ", ".join(sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(
        f"config file {str(name)!r} not found (neither as a path nor in {CONFIG_DIR}); available: {available}"
    )


def _load_with_bases(path: Path, seen: tuple[Path, ...] = ()) -> DictConfig:
    if path in seen:
        raise ConfigError(f"config {path} inherits from itself through _base_")
    try:
        config = OmegaConf.load(path)
    except Exception as error:  # YAML syntax errors come in many types
        raise ConfigError(f"cannot parse config file {path}: {error}") from error
    base = config.pop("_base_", None)
    if base is None:
        return config
    return OmegaConf.merge(_load_with_bases((path.parent / base).resolve(), seen + (path,)), config)


def _parse_overrides(overrides: Sequence[str]) -> DictConfig:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(
                f"override {item!r} must have the form key=value (e.g. k=200 or model.clip.pretrained=null)"
            )
    try:
        return OmegaConf.from_dotlist(list(overrides))
    except OmegaConfBaseException as error:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {error}") from error


def _merge_known_keys(config: DictConfig, overrides: DictConfig, prefix: str = "") -> None:
    """Merge ``overrides`` into ``config`` in place, rejecting keys that ``config`` does not have."""
    for key, value in overrides.items():
        name = f"{prefix}{key}"
        if key not in config:
            valid = ", ".join(f"{prefix}{k}" for k in config.keys())
            raise ConfigError(f"unknown config key {name!r}; valid keys here: {valid}")
        if isinstance(config[key], DictConfig) != isinstance(value, DictConfig):
            raise ConfigError(
                f"config key {name!r} is a {'section' if isinstance(config[key], DictConfig) else 'value'}; got {value!r}"
            )
        if isinstance(value, DictConfig):
            _merge_known_keys(config[key], value, prefix=f"{name}.")
        else:
            config[key] = value


def load_config(name: str | Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a config (with its ``_base_`` chain), apply ``key=value`` overrides and check every value.

    Raises:
        ConfigError: missing file, unknown key, bad value.
    """
    config = _load_with_bases(resolve_config_path(name).resolve())
    _merge_known_keys(config, _parse_overrides(overrides))
    validate_config(config)
    return config


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
    "crop": (lambda v: _is_int(v) and v >= 16 and v % 16 == 0, "a multiple of 16 (the patch size)"),
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
    "tol": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "maxiter": (lambda v: _is_int(v) and v > 0, "an integer >= 1"),
    "seed": (_is_int, "an integer"),
    "num_workers": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data_root": (lambda v: isinstance(v, str) and v != "", "a folder path"),
    "device": (
        lambda v: isinstance(v, str) and (v in ("auto", "cpu", "cuda") or v.startswith("cuda:")),
        "auto, cpu, cuda or cuda:N",
    ),
    "model.dtype": (lambda v: v in ("float32", "float16", "bfloat16"), "float32, float16 or bfloat16"),
    "model.templates": (lambda v: v in ("imagenet80", "single"), "imagenet80 or single"),
    "model.clip.name": (lambda v: isinstance(v, str) and v != "", "an open_clip model name"),
    "model.dino.name": (lambda v: isinstance(v, str) and v != "", "a timm model name"),
    "wandb.mode": (lambda v: v in ("online", "offline", "disabled"), "online, offline or disabled"),
}


def validate_config(config: DictConfig) -> None:
    """Check every known key's value; raise :class:`ConfigError` naming the first bad one."""
    for key, (check, expected) in _RULES.items():
        value = OmegaConf.select(config, key, default=None)
        if not check(value):
            raise ConfigError(f"config value {key}={value!r} is invalid: expected {expected}")
    if config.stride > config.crop:
        raise ConfigError(f"config value stride={config.stride} is invalid: expected at most crop={config.crop}")
    if config.long_side < config.short_side:
        raise ConfigError(
            f"config value long_side={config.long_side} is invalid: expected >= short_side={config.short_side}"
        )


# --- STAND-IN for the "config" branch's expand_sweep / sweep_parameters (replaced by theirs at merge) ---------
def _sweep_values(item: str) -> tuple[str, list[str]]:
    """``'k=100,200'`` -> ``('k', ['100', '200'])``; brackets, braces, quotes and calls are single values."""
    key, _, value = item.partition("=")
    if "," not in value or value[:1] in "[{'\"" or "(" in value:
        return key, [value]
    return key, [v.strip() for v in value.split(",")]


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra multirun comma syntax -> one plain override list per grid combination (last key varies fastest)."""
    grid: list[list[str]] = [[]]
    for item in overrides:
        key, values = _sweep_values(item)
        grid = [combo + [f"{key}={value}"] for combo in grid for value in values]
    return grid


def sweep_parameters(overrides: Sequence[str]) -> list[str]:
    """The keys that take more than one value in a sweep, in command-line order."""
    return [key for key, values in map(_sweep_values, overrides) if len(values) > 1]

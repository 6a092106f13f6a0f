"""Configuration dataclasses with named stage presets, and a command line generated from them.

Generic machinery (it knows no network, dataset or trainer): the trainers' configurations
(:mod:`train.common` and one module per network in ``train/``) subclass :class:`StagedConfig`.
Every field carries its help text in its metadata (:func:`opt`); :func:`build_parser` turns the
fields into ``--flags`` and :func:`resolve_config` combines, in this order:

1. the **preset** that the command line selects (:meth:`StagedConfig.defaults_for`: the stage
   preset chosen by ``--stage``, or the stage stored in ``--config FILE.json``, and its
   variants, e.g. ``--arch stcn`` and ``--preset lite`` for the trainers);
2. the fields of ``--config FILE.json`` (a saved ``config.json`` of an earlier run);
3. the flags given on the command line (only those actually given);
4. the derived values (:meth:`StagedConfig.resolved`).

When ``--iterations`` is changed and ``scale_schedule`` is on, the schedule fields
(:meth:`StagedConfig.schedule_fields`) are scaled by the same factor unless they are given
explicitly (so ``--iterations 2000`` keeps the shape of the schedule).

The resolved configuration is written as ``config.json`` into the run directory and stored in
every resumable checkpoint (see :mod:`util.trainer`). :func:`parse_top_k` is the argparse type
of the evaluations' ``--top-k``.

This module imports nothing from ``model/``, ``dataset/`` or ``inference/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from util.cli import field_option, split_optional
from util.fileio import atomic_save_json

logger = logging.getLogger(__name__)

__all__ = [
    "ConfigError",
    "StagedConfig",
    "opt",
    "build_parser",
    "resolve_config",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "load_config_file",
    "parse_top_k",
]

C = TypeVar("C", bound="StagedConfig")


class ConfigError(ValueError):
    """An invalid configuration value (message names the field / flag)."""


def opt(default: Any, help: str, *, choices: Sequence[Any] | None = None,
        metavar: str | None = None, flag: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with CLI metadata.

    Args:
        default: default value (immutable: use tuples for sequences).
        help: help text shown by ``--help``.
        choices: allowed values.
        metavar: name shown in the usage.
        flag: the long option (default ``--`` + field name with ``-`` for ``_``).
        cli: False to keep the field out of the command line (set programmatically).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "cli": cli}
    return field(default=default, metadata=meta)


# ============================================================================ staged configurations


class StagedConfig:
    """What the generic machinery here asks of a configuration dataclass (the trainers' is
    :class:`train.common.TrainConfig`), with neutral defaults:

    * :data:`STAGES` / :data:`DEFAULT_STAGE` and :meth:`for_stage`: the named stage presets
      (``STAGES`` maps a stage name to the classmethod that builds it);
    * :meth:`defaults_for`: the preset that the given values select (a stage, and fields of
      :data:`VARIANTS` such as an architecture preset);
    * :meth:`schedule_fields`: fields scaled with ``iterations``;
    * :meth:`resolved`: derived values (e.g. ``--amp auto`` for the device), applied after
      the overrides;
    * :meth:`validate`: raise :class:`ConfigError` for inconsistent values;
    * :meth:`summary`: one line for the logs.

    The dataclass also has the fields ``stage``, ``config`` (a JSON file to start from),
    ``iterations`` and ``scale_schedule``.
    """

    STAGES: ClassVar[dict[str, str]] = {}  # stage name -> name of the classmethod building it
    DEFAULT_STAGE: ClassVar[str] = ""
    #: fields whose values select another preset -> the values shown in --help defaults
    VARIANTS: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def for_stage(cls: type[C], stage: str) -> C:
        """The named stage preset (raises ConfigError for an unknown stage)."""
        if stage not in cls.STAGES:
            raise ConfigError(
                f"unknown stage {stage!r} for {cls.__name__}; valid: {', '.join(cls.STAGES)}")
        return getattr(cls, cls.STAGES[stage])()

    @classmethod
    def defaults_for(cls: type[C], given: Mapping[str, Any]) -> C:
        """The preset selected by the field values in ``given`` (here: only the stage)."""
        return cls.for_stage(given.get("stage", cls.DEFAULT_STAGE))

    def schedule_fields(self) -> tuple[str, ...]:
        """Fields scaled with ``iterations`` when ``scale_schedule`` is on."""
        return ()

    def resolved(self: C) -> C:
        """This configuration with its derived values filled in."""
        return self

    def validate(self) -> None:
        """Raise :class:`ConfigError` for inconsistent values."""

    def summary(self) -> str:
        """One line for the logs (subclasses describe their schedule)."""
        return f"{type(self).__name__} stage {getattr(self, 'stage', '')}"


def _flag_name(name: str) -> str:
    return name.replace("_", "-")


# ============================================================================ (de)serialisation


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(name: str, tp: Any, value: Any) -> Any:
    """Convert a JSON value to the field type ``tp`` (lists -> tuples, ints -> floats)."""
    base, optional = split_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"field {name!r} may not be null")
    if typing.get_origin(base) is tuple:
        elem = typing.get_args(base)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"field {name!r} must be a list, got {value!r}")
        return tuple(_coerce(name, elem, v) for v in value)
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"field {name!r} must be true/false, got {value!r}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"field {name!r} must be a number, got {value!r}")
        return float(value)
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"field {name!r} must be an integer, got {value!r}")
        return value
    if base is str:
        if not isinstance(value, str):
            raise ConfigError(f"field {name!r} must be a string, got {value!r}")
        return value
    raise ConfigError(f"field {name!r} has an unsupported type {tp!r}")


def config_to_dict(cfg: StagedConfig) -> dict[str, Any]:
    """JSON-ready dict of all fields (tuples become lists), plus ``_type`` (the class name)."""
    out: dict[str, Any] = {"_type": type(cfg).__name__}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def config_from_dict(cls: type[C], data: Mapping[str, Any], source: str = "config") -> C:
    """Build ``cls`` from a dict written by :func:`config_to_dict`.

    Unknown fields raise ConfigError (naming ``source``); missing fields take the default of
    the stored stage's preset.
    """
    data = dict(data)
    typ = data.pop("_type", cls.__name__)
    if typ != cls.__name__:
        raise ConfigError(f"{source} holds a {typ}, not a {cls.__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown fields {unknown}")
    base = cls.defaults_for(data)
    hints = _hints(cls)
    values = {k: _coerce(k, hints[k], v) for k, v in data.items()}
    return replace(base, **values)


def save_config(cfg: StagedConfig, path: str | os.PathLike) -> None:
    """Write the config as JSON atomically."""
    atomic_save_json(path, config_to_dict(cfg))


def load_config_file(cls: type[C], path: str | os.PathLike) -> C:
    """Read a JSON config file written by :func:`save_config`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = json.loads(p.read_text())
    except ValueError as e:
        raise ConfigError(f"config file {p} is not valid JSON: {e}") from e
    return config_from_dict(cls, data, source=str(p))


# ============================================================================ command line


def _format_default(v: Any) -> str:
    if isinstance(v, tuple):
        return " ".join(_format_default(x) for x in v) if v else "(empty)"
    if isinstance(v, float):
        return f"{v:g}"
    if v is None:
        return "none"
    if v == "":
        return "(unset)"
    return str(v)


def _grouped(values: dict[str, str]) -> str:
    groups: dict[str, list[str]] = {}
    for stage, v in values.items():
        groups.setdefault(v, []).append(stage)
    if len(groups) == 1:
        return next(iter(groups))
    return ", ".join(f"{'/'.join(stages)}: {v}" for v, stages in groups.items())


def _default_text(cls: type[StagedConfig], name: str) -> str:
    """'default: X', listing per-stage and per-variant defaults where they differ."""
    if name == "stage":
        return f"default: {cls.DEFAULT_STAGE}"
    if name in cls.VARIANTS:
        default = next(f.default for f in fields(cls) if f.name == name)
        return f"default: {_format_default(None if default is MISSING else default)}"
    base = {s: _format_default(getattr(cls.defaults_for({"stage": s}), name))
            for s in cls.STAGES}
    text = f"default: {_grouped(base)}"
    for variant, values in cls.VARIANTS.items():
        for value in values:
            other = {s: _format_default(getattr(cls.defaults_for({"stage": s, variant: value}),
                                                name)) for s in cls.STAGES}
            if other != base:
                text += f"; with --{_flag_name(variant)} {value}: {_grouped(other)}"
    return text


def build_parser(cls: type[StagedConfig], prog: str | None = None,
                 description: str | None = None, epilog: str | None = None
                 ) -> argparse.ArgumentParser:
    """An argparse parser with one option per CLI field of ``cls``.

    All defaults are ``argparse.SUPPRESS`` so that the parsed namespace holds only the flags
    actually given; the displayed defaults are those of the stage presets (and variants).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=argparse.SUPPRESS)
    hints = _hints(cls)
    for f in fields(cls):
        if not f.metadata.get("cli", True):
            continue
        help_text = f"{f.metadata.get('help', '')} ({_default_text(cls, f.name)})"
        names, kw = field_option(f, hints[f.name], dest=f.name, help_text=help_text)
        if f.name == "stage":
            kw["choices"] = list(cls.STAGES)
        parser.add_argument(*names, **kw)
    return parser


def _scale_schedule(cfg: C, base_iterations: int, explicit: set[str]) -> C:
    if cfg.iterations == base_iterations or not cfg.scale_schedule:
        return cfg
    factor = cfg.iterations / base_iterations
    changes: dict[str, Any] = {}
    for name in cfg.schedule_fields():
        if name in explicit:
            continue
        v = getattr(cfg, name)
        if isinstance(v, tuple):
            changes[name] = tuple(max(1, int(round(x * factor))) for x in v)
        else:
            changes[name] = int(round(v * factor))
    if changes.get("end_warm") is not None and changes.get("start_warm") is not None:
        if changes["end_warm"] <= changes["start_warm"]:
            changes["end_warm"] = changes["start_warm"] + 1
    if changes:
        logger.info("iterations %d -> %d: scaled %s", base_iterations, cfg.iterations,
                    ", ".join(f"{k}={_format_default(v)}" for k, v in changes.items()))
    return replace(cfg, **changes)


def apply_overrides(cfg: C, overrides: Mapping[str, Any], scale: bool = True) -> C:
    """``cfg`` with the given field values, then its derived values
    (:meth:`StagedConfig.resolved`); when ``iterations`` changed (and ``scale`` and
    ``cfg.scale_schedule``), the schedule fields not given are scaled by the same factor.
    Resuming passes ``scale=False``: extending a run keeps its schedule."""
    hints = _hints(type(cfg))
    values = {}
    for k, v in overrides.items():
        if k not in hints:
            raise ConfigError(f"unknown option {k!r}")
        values[k] = tuple(v) if isinstance(v, list) else v
    base_iterations = cfg.iterations
    out = replace(cfg, **values)
    if "iterations" in values and scale:
        out = _scale_schedule(out, base_iterations, set(values))
    return out.resolved()


def resolve_config(cls: type[C], argv: Sequence[str] | None = None, *, prog: str | None = None,
                   description: str | None = None, epilog: str | None = None
                   ) -> tuple[C, dict[str, Any]]:
    """Parse ``argv`` into a validated config of type ``cls``.

    Returns ``(config, overrides)`` where ``overrides`` holds the values given on the command
    line (used again when resuming from a checkpoint's stored config).
    Raises SystemExit (argparse) for malformed flags and ConfigError for invalid values.
    """
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog)
    ns = vars(parser.parse_args(argv))
    overrides = {k: v for k, v in ns.items()}
    if "config" in overrides and overrides["config"]:
        file_cfg = load_config_file(cls, overrides["config"])
        base = file_cfg
        if "stage" in overrides and overrides["stage"] != file_cfg.stage:
            base = cls.for_stage(overrides["stage"])
    else:
        base = cls.defaults_for(overrides)
    cfg = apply_overrides(base, overrides)
    cfg.validate()
    return cfg, overrides


def parse_top_k(value: str) -> int | None:
    """``'none'`` (full softmax) or a positive integer."""
    if value.strip().lower() in ("none", "full"):
        return None
    message = f"top-k must be a positive integer or 'none', got {value!r}"
    try:
        top_k = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(message) from None
    if top_k < 1:
        raise argparse.ArgumentTypeError(message)
    return top_k

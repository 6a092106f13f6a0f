"""Command-line options generated from configuration dataclasses (the evaluation scripts).

A field declared with :func:`cli_field` carries its ``--help`` text and how it is parsed;
:func:`add_config_arguments` adds one option per such field to a parser (nested dataclass fields
are walked, their options written ``<field>.<name>`` in the namespace), and
:func:`config_from_args` builds the dataclass back from the parsed namespace on top of a base
instance (e.g. the defaults of an architecture), taking only the options actually given.

The metadata keys are those of :func:`util.config.opt` (``help``, ``choices``, ``metavar``,
``flag``, ``cli``) plus per-field parsers, aliases and actions, and :func:`field_option` turns
one field into its option for both generators: this module's, for the evaluation configs (a
nested :class:`inference.inference_core.InferenceConfig`, options laid over a base instance),
and the trainers' :func:`util.config.build_parser`, which adds the stage presets' defaults to
the help texts.

This module is dependency-free (standard library only).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["add_config_arguments", "cli_field", "config_from_args", "given", "dest_of",
           "field_option", "split_optional"]

_MISSING = dataclasses.MISSING


def cli_field(default: Any = _MISSING, help: str = "", *,
              default_factory: Callable[[], Any] | Any = _MISSING,
              choices: Sequence[Any] | None = None, metavar: str | None = None,
              flag: str | None = None, aliases: Sequence[str] = (),
              parse: Callable[[str], Any] | None = None, action: str | None = None,
              default_text: str | None = None, group: str | None = None,
              cli: bool = True) -> Any:
    """A dataclass field with command-line metadata.

    Args:
        default / default_factory: as :func:`dataclasses.field` (neither: a required option).
        help: the ``--help`` text; the default is appended as ``(default: ...)``.
        choices: allowed values (checked after ``parse``).
        metavar: name shown in the usage.
        flag: the long option (default ``--`` + field name with ``-`` for ``_``);
            aliases: further spellings of the same option.
        parse: converts the option's text (default: the field's type).
        action: for bool fields, ``"store_true"`` (the flag sets True), ``"store_false"`` (the
            flag sets False, e.g. ``--restart`` for ``resume``); default: ``--x / --no-x``.
        default_text: replaces the shown default (e.g. when it depends on another option).
        group: the title of the argument group the option goes into.
        cli: False to keep the field off the command line (set in code).
    """
    meta = {"help": help, "choices": choices, "metavar": metavar, "flag": flag, "cli": cli,
            "aliases": tuple(aliases), "parse": parse, "action": action,
            "default_text": default_text, "group": group}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def dest_of(name: str, prefix: str = "") -> str:
    """The namespace attribute of field ``name`` under ``prefix`` (nested configs)."""
    return f"{prefix}{name}"


def given(args: argparse.Namespace, dest: str, default: Any = None) -> Any:
    """The value of an option given on the command line, else ``default``."""
    return getattr(args, dest, default)


def split_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_optional(conv: Callable[[str], Any]) -> Callable[[str], Any]:
    """``conv``, with ``none`` / ``null`` / an empty text meaning None."""
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "null", "") else conv(text)

    parse.__name__ = getattr(conv, "__name__", "value")
    return parse


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return " ".join(_show(v) for v in value)
    return str(value)


def _nested(f: dataclasses.Field, hints: Mapping[str, Any]) -> type | None:
    tp, _ = split_optional(hints[f.name])
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, *, prefix: str = "",
                         exclude: Sequence[str] = (),
                         groups: dict[str, Any] | None = None) -> None:
    """Add one option per command-line field of dataclass ``cls`` (and of its nested dataclass
    fields) to ``parser``.

    Options default to ``argparse.SUPPRESS``: the namespace holds only the options given, so
    that :func:`config_from_args` can lay them over a base instance. Fields without a default
    are required options. ``exclude``: field names (also of nested configs) left out.
    ``groups``: argument groups by title, shared between calls (created on first use).
    """
    groups = {} if groups is None else groups
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if f.name in exclude:
            continue
        nested = _nested(f, hints)
        if nested is not None:  # a nested configuration: its own fields are the options
            add_config_arguments(parser, nested, prefix=f"{prefix}{f.name}.", exclude=exclude,
                                 groups=groups)
            continue
        if not meta.get("cli", True) or "help" not in meta:  # set in code only
            continue
        title = meta.get("group")
        target = parser
        if title:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            target = groups[title]
        required = f.default is _MISSING and f.default_factory is _MISSING
        if meta.get("default_text") is not None:
            shown = meta["default_text"]
        elif f.default is not _MISSING:
            shown = _show(f.default)
        else:
            shown = None
        text = meta.get("help", "")
        if shown is not None and not required:
            text = f"{text} (default: {shown})" if text else f"default: {shown}"
        names, kw = field_option(f, hints[f.name], dest=dest_of(f.name, prefix), help_text=text)
        if required:
            kw["required"] = True
        target.add_argument(*names, **kw)


def field_option(f: dataclasses.Field, tp: Any, *, dest: str, help_text: str
                 ) -> tuple[list[str], dict[str, Any]]:
    """The option names and ``add_argument`` keywords of one dataclass field: the one rule of
    both generators (this module's for the evaluation configs, :func:`util.config.build_parser`
    for the trainers'). The default is ``argparse.SUPPRESS``: a parsed namespace holds only the
    options given.

    Bool fields are ``--x / --no-x`` (or ``store_true`` / ``store_false`` with the metadata's
    ``action``); ``tuple[T, ...]`` fields take any number of values; ``X | None`` fields also
    accept ``none``; the metadata's ``parse`` replaces the type's conversion.
    """
    meta = f.metadata
    names = [meta.get("flag") or f"--{f.name.replace('_', '-')}", *meta.get("aliases", ())]
    base, optional = split_optional(tp)
    kw: dict[str, Any] = {"dest": dest, "help": help_text, "default": argparse.SUPPRESS}
    if meta.get("metavar"):
        kw["metavar"] = meta["metavar"]
    if base is bool:
        action = meta.get("action")
        kw["action"] = action if action in ("store_true", "store_false") \
            else argparse.BooleanOptionalAction
        return names, kw
    if meta.get("choices"):
        kw["choices"] = list(meta["choices"])
    parse = meta.get("parse")
    if parse is None and typing.get_origin(base) is tuple:
        kw["nargs"] = "*"
        parse = typing.get_args(base)[0]
    elif parse is None:
        parse = _parse_optional(base) if optional else base
    kw["type"] = parse
    return names, kw


def config_from_args(cls: type, args: argparse.Namespace, base: Any = None, *,
                     prefix: str = "") -> Any:
    """Instance of dataclass ``cls``: the fields of ``base`` (None: the dataclass defaults)
    with the options given in ``args`` (as added by :func:`add_config_arguments`) laid over
    them; nested dataclass fields are built the same way from ``base``'s nested value."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        nested = _nested(f, hints)
        if nested is not None:
            inner = getattr(base, f.name) if base is not None else None
            values[f.name] = config_from_args(nested, args, inner, prefix=f"{prefix}{f.name}.")
            continue
        dest = dest_of(f.name, prefix)
        if hasattr(args, dest):
            values[f.name] = getattr(args, dest)
        elif base is not None:
            values[f.name] = getattr(base, f.name)
    return cls(**values)

"""Command-line options generated from dataclass fields, so each option is written once.

A field is on the command line when its metadata holds :func:`cli` (help text, choices,
the flag's spelling when it differs from ``--field-name``, a parser for values that are not
plain scalars, the help group); its default is the flag's default and its type the flag's
type. ``bool`` fields become switches, ``list[...]`` fields take several values, ``X | None``
fields take an ``X``, and a field whose type is itself a dataclass contributes that
dataclass's options. Fields without :func:`cli` metadata (what a command sets, not the user)
stay off the command line and keep their defaults.

A command can change a field's default, make it required or leave it out, without
touching the dataclass: ``finetune`` trains fewer steps by default than ``train``.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")

KEY = "cli"


@dataclasses.dataclass(frozen=True)
class CliOption:
    help: str = ""
    flag: str | None = None
    choices: tuple[Any, ...] | None = None
    parse: Callable[[str], Any] | None = None
    group: str | None = None


def cli(
    help: str = "",
    *,
    flag: str | None = None,
    choices: tuple[Any, ...] | None = None,
    parse: Callable[[str], Any] | None = None,
    group: str | None = None,
) -> dict[str, CliOption]:
    """Field metadata that puts the field on the command line: ``field(metadata=cli(...))``."""
    return {KEY: CliOption(help, flag, choices, parse, group)}


def choices_of(f: dataclasses.Field[Any]) -> tuple[Any, ...] | None:
    """The values a field accepts, when its :func:`cli` metadata lists them."""
    option = f.metadata.get(KEY)
    return option.choices if option is not None else None


def _without_none(kind: Any) -> Any:
    """``X | None`` -> ``X``; any other type unchanged."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        rest = [a for a in typing.get_args(kind) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return kind


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _argument(kind: Any, option: CliOption, default: Any, required: bool) -> dict[str, Any]:
    """``add_argument`` keywords for one field."""
    kind = _without_none(kind)
    if kind is bool:
        return {"action": "store_true", "help": option.help}
    args: dict[str, Any] = {"help": option.help, "choices": option.choices}
    if typing.get_origin(kind) is list:
        args["nargs"] = "+" if required else "*"
        args["type"] = option.parse or typing.get_args(kind)[0]
    else:
        args["type"] = option.parse or kind
    if required:
        args["required"] = True
    else:
        args["default"] = default
        if default is not None and default != []:
            args["help"] = f"{option.help} (default: %(default)s)".lstrip()
    return args


def add_fields(
    parser: argparse.ArgumentParser,
    cls: type[DataclassInstance],
    *,
    defaults: Mapping[str, Any] | None = None,
    required: Collection[str] = (),
    exclude: Collection[str] = (),
    groups: dict[str, argparse._ArgumentGroup] | None = None,
) -> dict[str, argparse._ArgumentGroup]:
    """Add one option per :func:`cli` field of ``cls`` (recursively); returns the help groups
    by title, so a command can add its own options to them."""
    defaults = defaults or {}
    groups = {} if groups is None else groups
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        option = f.metadata.get(KEY)
        if option is None or f.name in exclude:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(kind, type):
            add_fields(parser, kind, defaults=defaults, required=required, exclude=exclude, groups=groups)
            continue
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if option.group is not None:
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            target = groups[option.group]
        default = defaults.get(f.name, _default(f))
        needed = f.name in required or default is dataclasses.MISSING
        flag = option.flag or "--" + f.name.replace("_", "-")
        target.add_argument(flag, dest=f.name, **_argument(kind, option, default, needed))
    return groups


def from_args(cls: type[T], args: argparse.Namespace, **given: Any) -> T:
    """An instance of ``cls`` from parsed options; ``given`` values win, fields a command
    left out of its parser keep their dataclass defaults."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if f.name in given:
            values[f.name] = given[f.name]
        elif KEY not in f.metadata:
            continue
        elif dataclasses.is_dataclass(kind) and isinstance(kind, type):
            values[f.name] = from_args(kind, args)
        elif hasattr(args, f.name):
            values[f.name] = getattr(args, f.name)
    return cls(**values)

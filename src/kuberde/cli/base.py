"""How `kuberde` commands are declared: plain help text, and one set of connection flags.

Every command that talks to the gateway is registered with `gateway_command`, which adds
`--server`, `--token`, `--ca-file` and `--log-level` (one definition, shared by all) and
hands the command a `Gateway` with their values. Help is plain text like kubectl's and
gh's: `--port PORT`, `NAME`, never Python types such as `<list[Path]>`.

    @gateway_command(app, "extend")
    def extend(gateway: Gateway, name: NameArgument) -> None:
        '''Postpone a workspace's scale-down.

        Examples:

        \b
          kuberde extend dev
        '''
        settings = gateway.settings()
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from kuberde.cli import coercion
from kuberde.cli.config import ClientSettings, ConfigError, resolve

__all__ = [
    "CONNECTION_ERROR",
    "USAGE_ERROR",
    "CaFileOption",
    "Command",
    "Gateway",
    "Group",
    "LogLevelOption",
    "NameArgument",
    "ServerOption",
    "TokenOption",
    "command",
    "complete_names",
    "derived_metavar",
    "fail",
    "gateway_command",
    "set_log_level",
    "stdin_is_terminal",
    "suggestion",
]

USAGE_ERROR = 2
CONNECTION_ERROR = 1


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = CONNECTION_ERROR) -> NoReturn:
    """Print `kuberde: MESSAGE` on stderr and exit: the one error format of every command."""
    typer.echo(f"kuberde: {message}", err=True)
    raise typer.Exit(code)


#: Plain metavars by how an option's name ends, for options that name none themselves.
_METAVAR_BY_SUFFIX = (
    ("_dir", "DIR"),
    ("_file", "FILE"),
    ("kubeconfig", "FILE"),
    ("_cert", "FILE"),
    ("_key", "FILE"),
    ("_url", "URL"),
    ("_api", "URL"),
    ("issuer", "URL"),
    ("interval", "SECONDS"),
    ("timeout", "SECONDS"),
    ("listen", "HOST:PORT"),
    ("_account", "NAMESPACE:NAME"),
)


def derived_metavar(name: str, annotation: object) -> str:
    """`--state-dir DIR`, `--wake-timeout SECONDS`, `--max-streams-per-user N`,
    `--output text|json`, `--oidc-client-id ID`: a plain word from the option's name and
    annotated type."""
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return "|".join(str(member.value) for member in annotation)
    for suffix, metavar in _METAVAR_BY_SUFFIX:
        if name.endswith(suffix):
            return metavar
    if annotation is int:
        return "N"
    return name.rsplit("_", 1)[-1].upper() or "VALUE"


def _metavar(param: TyperOption | TyperArgument) -> str:
    if param.metavar:
        return param.metavar
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return derived_metavar(param.name or "value", annotation)


def _extras(param: TyperOption | TyperArgument, ctx: Any) -> list[str]:
    extras = []
    envvar = param.envvar
    if envvar and getattr(param, "show_envvar", True):
        extras.append(f"env: {envvar if isinstance(envvar, str) else ', '.join(envvar)}")
    default = param.get_default(ctx, call=False)
    flag = getattr(param, "is_flag", False)
    if getattr(param, "show_default", True) not in (False, None) and not flag:
        if isinstance(default, Enum):
            default = default.value
        if default not in (None, "", (), []) and not callable(default):
            if isinstance(default, list | tuple):
                default = " ".join(str(item) for item in default)
            extras.append(f"default: {default}")
    return extras


def _help_record(param: TyperOption | TyperArgument, ctx: Any) -> tuple[str, str] | None:
    """One line of `--help`: `-p, --port PORT   text [default: 22]`."""
    if getattr(param, "hidden", False):
        return None
    if isinstance(param, TyperOption):
        name = ", ".join(sorted(param.opts, key=len))
        if param.secondary_opts:
            name += " / " + ", ".join(param.secondary_opts)
        if not param.is_flag and not param.count:
            name += f" {_metavar(param)}"
    else:
        name = _metavar(param) + ("..." if param.nargs != 1 and not param.metavar else "")
    text = getattr(param, "help", None) or ""
    extras = _extras(param, ctx)
    if extras:
        text = f"{text}  [{'; '.join(extras)}]".strip()
    return name, text


def _format_params(owner: Any, ctx: Any, formatter: Any) -> None:
    sections: dict[str, list[tuple[str, str]]] = {"Arguments": [], "Options": []}
    for param in owner.get_params(ctx):
        record = _help_record(param, ctx)
        if record is not None:
            key = "Options" if isinstance(param, TyperOption) else "Arguments"
            sections[key].append(record)
    for title, records in sections.items():
        if records:
            with formatter.section(title):
                formatter.write_dl(records)


class Command(TyperCommand):
    """A command whose help is plain text with plain metavars, and whose values are
    converted without pydantic (`coercion`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["rich_markup_mode"] = None
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return coercion.installed(super().get_params(ctx))

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                piece = _metavar(param) + ("..." if param.nargs != 1 and not param.metavar else "")
                pieces.append(piece if param.required else f"[{piece}]")
        return pieces


class Group(TyperGroup):
    """The top-level group: plain help, "did you mean" only for a likely typo, and values
    converted without pydantic."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["rich_markup_mode"] = None
        kwargs["suggest_commands"] = False
        super().__init__(*args, **kwargs)

    def get_params(self, ctx: Any) -> list[Any]:
        return coercion.installed(super().get_params(ctx))

    def resolve_command(
        self, ctx: Any, args: list[str]
    ) -> tuple[str | None, Any | None, list[str]]:
        if args and not args[0].startswith("-") and self.get_command(ctx, args[0]) is None:
            hint = suggestion(args[0], self.list_commands(ctx))
            typer.echo(f"kuberde: unknown command {args[0]!r}{hint}", err=True)
            typer.echo("Run 'kuberde --help' for the list of commands.", err=True)
            raise typer.Exit(USAGE_ERROR)
        return super().resolve_command(ctx, args)

    def format_options(self, ctx: Any, formatter: Any) -> None:
        _format_params(self, ctx, formatter)
        self.format_commands(ctx, formatter)


def suggestion(typo: str, commands: Sequence[str]) -> str:
    """`; did you mean 'logs'?` for a near miss (one edit, or a prefix), else nothing."""
    close = [name for name in commands if _near(typo, name)]
    return f"; did you mean {' or '.join(repr(n) for n in close[:2])}?" if close else ""


def _near(typo: str, name: str) -> bool:
    if len(typo) >= 2 and name.startswith(typo):
        return True
    return _edit_distance(typo, name) <= (1 if len(name) <= 4 else 2)


def _edit_distance(a: str, b: str) -> int:
    """Damerau-Levenshtein distance (a swap of two neighbours counts as one edit)."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            cost = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def complete_names(incomplete: str) -> list[str]:
    """Workspace names for shell completion, from the configured gateway; nothing (and no
    error) when it cannot say, since a completion must never print or hang."""
    from kuberde import aio
    from kuberde.cli.api import ApiError, request

    try:
        settings = resolve(None, None, os.environ)
        payload = aio.run(request(settings, "GET", "/api/workspaces", deadline=3.0))
    except (ConfigError, ApiError, OSError):
        return []
    names = [item.get("name") for item in payload.get("workspaces", [])]
    return sorted(n for n in names if isinstance(n, str) and n.startswith(incomplete))


NameArgument = Annotated[
    str,
    typer.Argument(
        metavar="NAME",
        help="Workspace name (`dev`), full agent ID (`user-alice-dev`) or `NAME.kuberde`.",
        show_default=False,
        autocompletion=complete_names,
    ),
]


@dataclass(frozen=True)
class Gateway:
    """The connection flags a gateway command was given; `settings()` resolves them."""

    server: str | None = None
    token: str | None = None
    ca_file: str | None = None

    def settings(self) -> ClientSettings:
        """Flags, then environment, then the CLI config; exit 2 naming the fix if none."""
        try:
            return resolve(self.server, self.token, os.environ, ca_file_flag=self.ca_file)
        except ConfigError as exc:
            fail(str(exc), USAGE_ERROR)


ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help="Gateway URL, e.g. http://127.0.0.1:8080 (else $KUBERDE_SERVER, then the "
        "CLI config written by `kuberde up` or `kuberde login`).",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help="User token (else $KUBERDE_TOKEN, then the CLI config).",
        show_default=False,
    ),
]
CaFileOption = Annotated[
    str | None,
    typer.Option(
        "--ca-file",
        metavar="FILE",
        help="Extra CA certificate (PEM) to trust for the gateway (else $KUBERDE_CA_FILE).",
        show_default=False,
    ),
]
LogLevelOption = Annotated[
    LogLevel | None,
    typer.Option(
        "--log-level",
        metavar="|".join(level.value for level in LogLevel),
        help="Log detail on stderr (else $KUBERDE_LOG_LEVEL).",
        show_default=False,
    ),
]
_CONNECTION_FLAGS = {
    "server": ServerOption,
    "token": TokenOption,
    "ca_file": CaFileOption,
    "log_level": LogLevelOption,
}


def set_log_level(level: LogLevel | None) -> None:
    if level is not None:
        logging.getLogger().setLevel(level.value.upper())


def command(app: typer.Typer, name: str | None = None, **settings: Any) -> Callable[[F], F]:
    """`app.command` with KubeRDE's plain help; for commands that need no gateway."""

    def register(func: F) -> F:
        app.command(name, cls=Command, **settings)(func)
        return func

    return register


def gateway_command(
    app: typer.Typer, name: str | None = None, *, token: bool = True, **settings: Any
) -> Callable[[F], F]:
    """Register `func(gateway: Gateway, ...)` as a command with the connection flags
    (`token=False` leaves `--token` out, for a command that only ever uses the stored one)."""
    flags = {key: kind for key, kind in _CONNECTION_FLAGS.items() if token or key != "token"}

    def register(func: F) -> F:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            parameter.replace(annotation=hints.get(parameter.name, parameter.annotation))
            for parameter in inspect.signature(func).parameters.values()
            if parameter.name != "gateway"
        ]
        shared = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=None)
            for name, kind in flags.items()
        ]

        @functools.wraps(func)
        def run(*args: Any, **kwargs: Any) -> Any:
            set_log_level(kwargs.pop("log_level"))
            given = Gateway(kwargs.pop("server"), kwargs.pop("token", None), kwargs.pop("ca_file"))
            return func(*args, gateway=given, **kwargs)

        del run.__wrapped__
        parameters = [*own, *shared]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        app.command(name, cls=Command, **settings)(run)
        return func

    return register


def stdin_is_terminal() -> bool:
    """Whether a person can answer a prompt: stdin is a terminal (never /dev/tty otherwise)."""
    return sys.stdin is not None and sys.stdin.isatty()

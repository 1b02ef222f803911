"""``portunus-server``: the binary's own parser, generated from the task collection.

The commands, their flags, positionals, defaults and help texts are read
from the invoke tasks in portunus.tasks (the same definitions ``invoke``
runs), so a flag added to a task appears here with no change to this file.
What invoke's Program would add is left out on purpose: its help layout,
its error wording, and its configuration files (/etc/invoke.yaml,
~/.invoke.yaml, ./invoke.yaml, ``INVOKE_*``): the server binary reads none
of them (see docs/design.md).

Global flags come before the subcommand (``portunus-server --data-dir DIR
backup --out PATH``). Usage errors exit 2 with one ``cli.usage_error``
event; a task's PortunusError has already been turned into its exit code
by portunus.tasks.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import structlog
from invoke import Config, Context, Exit

from portunus import __version__, log
from portunus.errors import EXIT_CODES
from portunus.tasks import collection, silence_stdout

logger = structlog.get_logger()

USAGE_EXIT = 2
BINARY = "portunus-server"
SUMMARY = "The Portunus control plane: serve the API; back up, restore and inspect its store."

# A group's one line in --help; a group added without one lists its subcommands.
GROUP_HELP = {
    "config": "read, check and edit server.toml",
    "audit": "audit-log maintenance",
}

SHELLS = ("bash", "zsh")


class UsageProblem(Exception):
    """What the parser cannot act on: exit 2, one cli.usage_error event."""

    def __init__(self, msg: str, hint: str | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.hint = hint or f"run '{BINARY} --help' for usage"


# NamedTuples and plain classes, not dataclasses: defining a dataclass costs
# about a millisecond at every start (docs/performance.md, "Cold start").
class Option(NamedTuple):
    """One flag or positional of a command, as the task declares it."""

    names: tuple[str, ...]  # "out", "o": long first, as invoke orders them
    attr: str  # the task function's parameter
    kind: type
    default: Any
    help: str
    positional: bool = False
    repeatable: bool = False
    counted: bool = False
    optional_value: bool = False

    @property
    def long(self) -> str:
        return f"--{self.names[0]}"

    @property
    def shorts(self) -> list[str]:
        return [f"-{n}" for n in self.names[1:] if len(n) == 1]

    @property
    def metavar(self) -> str:
        return self.names[0].upper().replace("-", "_")

    @property
    def takes_value(self) -> bool:
        return self.kind is not bool and not self.counted

    @property
    def negated(self) -> str | None:
        """``--no-X`` for a boolean that defaults to true (invoke's rule)."""
        return f"--no-{self.names[0]}" if self.kind is bool and self.default is True else None


class Command(NamedTuple):
    name: str  # as typed: "backup", "config show"
    summary: str
    doc: str
    run: Callable[..., Any]
    declared: tuple[Option, ...] | None = None  # None: read from the task ``run``

    @property
    def options(self) -> tuple[Option, ...]:
        return _task_options(self.run) if self.declared is None else self.declared

    @property
    def flags(self) -> list[Option]:
        return [o for o in self.options if not o.positional]

    @property
    def positionals(self) -> list[Option]:
        return [o for o in self.options if o.positional]

    def flag_words(self) -> list[str]:
        words: list[str] = []
        for option in self.flags:
            words += [option.negated or option.long, *option.shorts]
        return words


class Commands:
    """Every command by its typed name, and the groups (``config``, ``audit``)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Command] = {}
        self.groups: dict[str, list[str]] = {}

    def top_words(self) -> list[str]:
        words = [n for n in self.by_name if " " not in n]
        return words + list(self.groups)


GLOBAL_FLAGS = (
    ("--data-dir", "DIR", "data dir holding state.db (README: the default resolution order)"),
    ("--config", "FILE", "server.toml to read (default: $PORTUNUS_CONFIG, else DIR/server.toml)"),
    ("--log-format", "FORMAT", "logfmt (default), json or console"),
    ("-h, --help", "", "show this help; COMMAND --help for a command's"),
    ("-V, --version", "", "show the version"),
)
GLOBAL_VALUE_FLAGS = ("--data-dir", "--config", "--log-format")


# --- the commands, read from the tasks -------------------------------------------------


def build_commands(namespace: Any) -> Commands:
    found = Commands()
    for name, task in namespace.tasks.items():
        found.by_name[name] = _command(name, task)
    for group, sub in namespace.collections.items():
        found.groups[group] = []
        for name, task in sub.tasks.items():
            found.by_name[f"{group} {name}"] = _command(f"{group} {name}", task)
            found.groups[group].append(name)
    found.by_name["completion"] = Command(
        name="completion",
        summary="Print a shell completion script for bash or zsh.",
        doc=(
            "Print a shell completion script for bash or zsh.\n\n"
            f"bash: {BINARY} completion bash > /etc/bash_completion.d/{BINARY}\n"
            f'zsh:  {BINARY} completion zsh > "${{fpath[1]}}/_{BINARY}"\n'
            f"Or, for the current shell only: source <({BINARY} completion bash)"
        ),
        run=_print_completion,
        declared=(Option(("shell",), "shell", str, None, "bash or zsh", positional=True),),
    )
    return found


def _command(name: str, task: Any) -> Command:
    doc = inspect.cleandoc(task.__doc__ or "").strip()
    return Command(name, doc.split("\n\n")[0].replace("\n", " "), doc, task)


@functools.cache
def _task_options(task: Any) -> tuple[Option, ...]:
    """A task's flags and positionals, read from its signature when first
    needed: only the command being run (or asked about) pays for that, not
    every command at every start (docs/performance.md, "Cold start")."""
    return tuple(
        Option(
            names=tuple(arg.names),
            attr=arg.attr_name or arg.names[0].replace("-", "_"),
            kind=arg.kind,
            default=arg.default,
            help=arg.help or "",
            positional=arg.positional,
            repeatable=arg.kind is list,
            counted=arg.incrementable,
            optional_value=arg.optional,
        )
        for arg in task.get_arguments()
    )


# --- parsing ---------------------------------------------------------------------------


class Invocation:
    """What a command line asks for, filled in as it is parsed."""

    def __init__(self, options: dict[str, str | None]) -> None:
        self.options = options
        self.action = "run"  # run | help | version
        self.command: Command | None = None
        self.group: str | None = None  # help for a group
        self.kwargs: dict[str, Any] = {}


def parse(argv: list[str], commands: Commands) -> Invocation:
    found = Invocation(options={"data_dir": None, "config": None, "log_format": None})
    rest = _parse_global_flags(argv, found)
    if found.action == "version":
        return found
    if not rest:
        if found.action == "help":
            return found
        raise UsageProblem("a subcommand is required")
    command, rest = _find_command(rest, commands, found)
    if command is None:
        return found  # help for a group
    found.command = command
    if found.action == "help" or {"--help", "-h"} & set(rest[: _end_of_flags(rest)]):
        found.action = "help"
        return found
    found.kwargs = _parse_command_args(command, rest, commands)
    return found


def _parse_global_flags(argv: list[str], found: Invocation) -> list[str]:
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        arg = argv[i]
        flag, has_value, value = arg.partition("=")
        if arg == "--":
            return argv[i + 1 :]
        if arg in ("--help", "-h"):
            found.action = "help"
        elif arg in ("--version", "-V"):
            found.action = "version"
            return []
        elif flag in GLOBAL_VALUE_FLAGS:
            key = flag[2:].replace("-", "_")
            if found.options[key] is not None:
                raise UsageProblem(f"{flag} is given more than once; give it once")
            if not has_value:
                if i + 1 >= len(argv):
                    raise UsageProblem(f"{flag} needs a value", f"e.g. {flag}=VALUE")
                i += 1
                value = argv[i]
            found.options[key] = value
        else:
            raise _unknown_global_flag(flag)
        i += 1
    return argv[i:]


def _unknown_global_flag(flag: str) -> UsageProblem:
    known = [*GLOBAL_VALUE_FLAGS, "--help", "--version"]
    near = difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
    if near:
        hint = f"did you mean {near[0]}? run '{BINARY} --help' for usage"
    else:
        hint = f"a command's own flags go after it, e.g. {BINARY} backup --out PATH"
    return UsageProblem(f"unknown global flag {flag}", hint)


def _find_command(
    rest: list[str], commands: Commands, found: Invocation
) -> tuple[Command | None, list[str]]:
    word, rest = rest[0], rest[1:]
    if word in commands.groups:
        if not rest or rest[0].startswith("-"):
            # ``config`` alone, or ``config --help``: list the group's subcommands.
            if rest and rest[0] not in ("--help", "-h"):
                raise UsageProblem(
                    f"'{word}' needs a subcommand before its flags: "
                    f"{', '.join(commands.groups[word])}",
                    hint=f"run '{BINARY} {word}' for the list",
                )
            found.action, found.group = "help", word
            return None, rest
        sub, rest = rest[0], rest[1:]
        if sub not in commands.groups[word]:
            raise UsageProblem(
                f"unknown subcommand '{word} {sub}'",
                hint=_did_you_mean(sub, commands.groups[word], f"{word} ", f"{BINARY} {word}"),
            )
        return commands.by_name[f"{word} {sub}"], rest
    group, dot, sub = word.partition(".")  # invoke's spelling, ``config.show``
    if dot and group in commands.groups and sub in commands.groups[group]:
        return commands.by_name[f"{group} {sub}"], rest
    if word in commands.by_name:
        return commands.by_name[word], rest
    if found.action == "help":
        raise UsageProblem(
            f"no such subcommand: {word!r}",
            hint=_did_you_mean(word, commands.top_words(), "", f"{BINARY} --help"),
        )
    raise UsageProblem(
        f"unknown subcommand '{word}'",
        hint=_did_you_mean(word, commands.top_words(), "", f"{BINARY} --help"),
    )


def _did_you_mean(word: str, choices: list[str], prefix: str, lister: str) -> str:
    near = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    listing = f"run '{lister}' for the list"
    return f"did you mean '{prefix}{near[0]}'? {listing}" if near else listing


def _end_of_flags(args: list[str]) -> int:
    return args.index("--") if "--" in args else len(args)


def _parse_command_args(command: Command, args: list[str], commands: Commands) -> dict[str, Any]:
    values: dict[str, Any] = {}
    positionals = iter(command.positionals)
    i = 0
    only_positionals = False
    while i < len(args):
        arg = args[i]
        if arg == "--" and not only_positionals:
            only_positionals = True
        elif arg.startswith("-") and arg != "-" and not only_positionals:
            i = _parse_flag(command, args, i, values)
        else:
            option = next(positionals, None)
            if option is None:
                raise _stray(command, arg, commands)
            values[option.attr] = arg
        i += 1
    missing = [o for o in command.positionals if o.attr not in values]
    if missing:
        raise UsageProblem(
            f"{command.name} needs {' '.join(o.metavar for o in missing)}",
            hint=f"usage: {_usage(command)}",
        )
    return values


def _stray(command: Command, arg: str, commands: Commands) -> UsageProblem:
    if arg in commands.by_name or arg in commands.groups:
        return UsageProblem(f"one subcommand at a time, got: {command.name}, {arg}")
    return UsageProblem(
        f"unexpected argument '{arg}' for {command.name}", hint=f"usage: {_usage(command)}"
    )


def _parse_flag(command: Command, args: list[str], i: int, values: dict[str, Any]) -> int:
    """Read the flag at args[i] (and its value); return the index of the last word used."""
    flag, has_value, value = args[i].partition("=")
    if not flag.startswith("--") and len(flag) > 2 and not has_value:
        # Short booleans run together: ``-fj``.
        for letter in flag[1:]:
            _parse_flag(command, [f"-{letter}"], 0, values)
        return i
    option, setting = _lookup(command, flag)
    if not option.takes_value:
        if has_value:
            raise UsageProblem(f"{flag} takes no value", hint=f"usage: {_usage(command)}")
        values[option.attr] = values.get(option.attr, 0) + 1 if option.counted else setting
        return i
    if not has_value:
        following = args[i + 1] if i + 1 < len(args) else None
        if following is None or (following.startswith("-") and following != "-"):
            if option.optional_value:
                values[option.attr] = True
                return i
            raise UsageProblem(
                f"{flag} needs a value",
                hint=f"e.g. {option.long} {option.metavar} "
                f"(or {option.long}={option.metavar} for a value starting with '-')",
            )
        value, i = following, i + 1
    converted = _convert(option, flag, value)
    if option.repeatable:
        values.setdefault(option.attr, []).append(converted)
    elif option.attr in values:
        raise UsageProblem(f"{option.long} is given more than once; give it once")
    else:
        values[option.attr] = converted
    return i


def _lookup(command: Command, flag: str) -> tuple[Option, bool]:
    for option in command.flags:
        if flag == option.long or flag in option.shorts:
            return option, True
        if flag == option.negated:
            return option, False
    if flag in GLOBAL_VALUE_FLAGS or flag in ("--version", "-V"):
        raise UsageProblem(
            f"{flag} is a global flag: give it before the subcommand",
            hint=f"e.g. {BINARY} {flag} ... {command.name}",
        )
    near = difflib.get_close_matches(flag, command.flag_words(), n=1, cutoff=0.6)
    listing = f"run '{BINARY} {command.name} --help' for its flags"
    hint = f"did you mean {near[0]}? {listing}" if near else listing
    raise UsageProblem(f"unknown flag {flag} for {command.name}", hint)


def _convert(option: Option, flag: str, value: str) -> Any:
    kind = str if option.kind in (list, str) or option.kind is None else option.kind
    try:
        return kind(value)
    except ValueError:
        name = getattr(kind, "__name__", "value")
        raise UsageProblem(
            f"{flag} must be {'an' if name[0] in 'aeiou' else 'a'} {name}, got {value!r}"
        ) from None


# --- help ------------------------------------------------------------------------------


def _usage(command: Command) -> str:
    parts = [BINARY, "[GLOBAL FLAGS]", command.name]
    for option in command.flags:
        shown = option.negated or option.long
        if option.takes_value:
            shown += f" {option.metavar}"
        parts.append(f"[{shown}]" + ("..." if option.repeatable else ""))
    parts += [o.metavar for o in command.positionals]
    return " ".join(parts)


def _rows(rows: list[tuple[str, str]], indent: int = 2) -> Iterator[str]:
    width = max((len(left) for left, _ in rows), default=0) + 2
    for left, right in rows:
        yield f"{' ' * indent}{left:<{width}}{right}".rstrip()


def main_help(commands: Commands) -> str:
    lines = [f"usage: {BINARY} [GLOBAL FLAGS] COMMAND [FLAGS] [ARGS]", "", SUMMARY, "", "Commands:"]
    rows = []
    for name, command in commands.by_name.items():
        rows.append((name, command.summary))
    lines += _rows(rows)
    lines += ["", "Global flags (before the command):"]
    lines += _rows([(f"{flag} {meta}".strip(), text) for flag, meta, text in GLOBAL_FLAGS])
    lines += ["", f"'{BINARY} COMMAND --help' shows a command's flags and arguments.", ""]
    lines += ["Exit codes:"]
    lines += _rows([(str(code), meaning) for code, meaning in EXIT_CODES.items()])
    return "\n".join(lines) + "\n"


def group_help(group: str, commands: Commands) -> str:
    subs = commands.groups[group]
    about = GROUP_HELP.get(group, "subcommands: " + ", ".join(subs))
    lines = [f"usage: {BINARY} [GLOBAL FLAGS] {group} SUBCOMMAND [FLAGS] [ARGS]", "", about, ""]
    lines.append("Subcommands:")
    lines += _rows([(f"{group} {s}", commands.by_name[f"{group} {s}"].summary) for s in subs])
    lines += ["", f"'{BINARY} {group} SUBCOMMAND --help' shows a subcommand's flags."]
    return "\n".join(lines) + "\n"


def command_help(command: Command) -> str:
    lines = [f"usage: {_usage(command)}", "", command.doc]
    if command.positionals:
        lines += ["", "Arguments:"]
        lines += _rows([(o.metavar, o.help) for o in command.positionals])
    rows = []
    for option in command.flags:
        left = ", ".join([*option.shorts, option.negated or option.long])
        if option.takes_value:
            left += f" {option.metavar}"
        right = option.help + (" (may be given more than once)" if option.repeatable else "")
        rows.append((left, right))
    rows.append(("-h, --help", "show this help"))
    lines += ["", "Flags:", *_rows(rows)]
    lines += ["", f"Global flags (--data-dir, --config, --log-format) go before '{command.name}'."]
    return "\n".join(lines) + "\n"


# --- running ---------------------------------------------------------------------------


def _print_completion(_context: Any, shell: str) -> None:
    from portunus import completion

    if shell not in SHELLS:
        raise UsageProblem(
            f"no completion for shell {shell!r}: bash or zsh",
            hint=f"e.g. source <({BINARY} completion bash)",
        )
    print(completion.script(shell, build_commands(collection())), end="")


def _context(options: dict[str, str | None]) -> Context:
    """An invoke Context carrying the global flags, and nothing read from
    invoke's configuration files or INVOKE_* variables: ``lazy=True`` skips
    the system and user files, and no project file or environment is loaded."""
    return Context(config=Config(overrides={"portunus": options}, lazy=True))


def run(argv: list[str]) -> int:
    log.configure(_log_format_asked(argv))
    commands = build_commands(collection())
    try:
        found = parse(argv, commands)
        if found.action == "version":
            print(f"{BINARY} {__version__}")
        elif found.action == "help":
            if found.command:
                text = command_help(found.command)
            elif found.group:
                text = group_help(found.group, commands)
            else:
                text = main_help(commands)
            print(text, end="")
        else:
            assert found.command is not None
            found.command.run(_context(found.options), **found.kwargs)
    except UsageProblem as problem:
        logger.error("cli.usage_error", msg=problem.msg, hint=problem.hint, exit_code=USAGE_EXIT)
        return USAGE_EXIT
    except Exit as exc:
        if exc.message:
            print(exc.message, file=sys.stderr)
        return exc.code
    except KeyboardInterrupt as exc:  # errors.Interrupted: see portunus.tasks
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:
        silence_stdout()
    return 0


def _log_format_asked(argv: list[str]) -> str:
    """The --log-format value, read ahead of the parser so that a usage
    error (even in the global flags) is logged in the format a JSON log
    pipeline asked for. An invalid value is reported later, in logfmt."""
    for i, arg in enumerate(argv):
        if arg.startswith("--log-format="):
            value = arg.partition("=")[2]
        elif arg == "--log-format" and i + 1 < len(argv):
            value = argv[i + 1]
        else:
            continue
        return value if value in log.LOG_FORMATS else "logfmt"
    return "logfmt"


def main() -> None:
    sys.exit(run(sys.argv[1:]))

"""``portunus-server``: an invoke Program over the operator task collection.

Global flags come before the subcommand (``portunus-server --data-dir DIR
backup --out PATH``). Usage errors exit 2; a task's PortunusError has
already been turned into its exit code by portunus.tasks.
"""

from __future__ import annotations

import re
import signal
import sys
from typing import Any

import structlog
from invoke import Program
from invoke.exceptions import Exit, ParseError, UnexpectedExit
from invoke.parser import Argument

from portunus import __version__, log
from portunus.errors import EXIT_CODES
from portunus.tasks import collection, silence_stdout

logger = structlog.get_logger()

USAGE_EXIT = 2


class PortunusProgram(Program):
    """invoke's Program with the server's global flags and exit-code rules."""

    def core_args(self) -> list[Argument]:
        return [
            Argument(
                names=("data-dir",),
                help="Data dir holding state.db (see README for the default resolution order).",
            ),
            Argument(
                names=("config",),
                help="server.toml to read (default: $PORTUNUS_CONFIG, "
                "else <data-dir>/server.toml).",
            ),
            Argument(names=("log-format",), help="logfmt (default), json or console."),
            Argument(names=("help", "h"), optional=True, help="Show help, or a subcommand's."),
            Argument(names=("version", "V"), kind=bool, default=False, help="Show version."),
        ]

    def parse_core(self, argv: list[str] | None) -> None:
        self.normalize_argv(argv)
        _refuse_repeated_global_flags(self.argv[1:])
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit

    def parse_tasks(self) -> None:
        self.core.unparsed = _join_subcollection(self.core.unparsed, self.collection)
        name = _help_asked_after_subcommand(self.core.unparsed, self.collection)
        if name:
            # ``verify --help``: a positional argument would swallow the flag.
            self.args.help.set_value(name)
            self.parser = self._make_parser()
            self.tasks = []
            return
        super().parse_tasks()

    def parse_cleanup(self) -> None:
        wanted = self.args.help.value
        if wanted is True:
            self.print_help()
            raise Exit
        if wanted:
            if wanted not in self.parser.contexts:
                raise ParseError(f"no such subcommand: {wanted!r}")
            self.print_task_help(wanted)
            raise Exit
        if not self.tasks:
            raise ParseError("a subcommand is required")
        if len(self.tasks) > 1:
            names = ", ".join(t.name for t in self.tasks)
            raise ParseError(f"one subcommand at a time, got: {names}")

    def update_config(self, merge: bool = True) -> None:
        options = {
            "data_dir": self.args["data-dir"].value,
            "config": self.args.config.value,
            "log_format": self.args["log-format"].value,
        }
        self.config.load_overrides({"portunus": options}, merge=False)
        if merge:
            self.config.merge()

    def print_help(self) -> None:
        super().print_help()
        print("Exit codes:")
        print("")
        for code, meaning in EXIT_CODES.items():
            print(f"  {code:<4}{meaning}")
        print("")

    def run(self, argv: list[str] | None = None, exit: bool = True) -> int:
        log.configure(_log_format_asked(sys.argv[1:] if argv is None else argv))
        code = self._run_steps(argv)
        if exit:
            sys.exit(code)
        return code

    def _run_steps(self, argv: list[str] | None) -> int:
        try:
            self.create_config()
            self.parse_core(argv)
            self.parse_collection()
            self.parse_tasks()
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as exc:
            logger.error(
                "cli.usage_error",
                msg=_flag_names_as_typed(str(exc)),
                hint=f"run '{self.binary} --help' for usage",
                exit_code=USAGE_EXIT,
            )
            return USAGE_EXIT
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            return exc.code
        except UnexpectedExit as exc:
            return exc.result.exited
        except KeyboardInterrupt as exc:  # errors.Interrupted: see portunus.tasks
            return 128 + getattr(exc, "signum", signal.SIGINT)
        except BrokenPipeError:
            silence_stdout()
        return 0


GLOBAL_VALUE_FLAGS = ("--data-dir", "--config", "--log-format")


def _refuse_repeated_global_flags(argv: list[str]) -> None:
    """invoke's parser turns ``--log-format json ... --log-format json`` into
    "No idea what 'json' is!"; name the real mistake instead."""
    seen: set[str] = set()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        flag, has_value, _ = argv[i].partition("=")
        if flag in GLOBAL_VALUE_FLAGS:
            if flag in seen:
                raise ParseError(f"{flag} is given more than once; give it once")
            seen.add(flag)
            i += 1 if has_value else 2
        else:
            i += 1


def _log_format_asked(argv: list[str]) -> str:
    """The --log-format value, read ahead of invoke's parser so that a usage
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


def _flag_names_as_typed(message: str) -> str:
    """invoke names flags by their Python argument (``<Argument: in_ (i)>``);
    say ``--in`` as the operator typed it."""
    return re.sub(
        r"<Argument: ([A-Za-z0-9_]+?)_?(?: \([^)]*\))?>",
        lambda m: "--" + m[1].replace("_", "-"),
        message,
    )


def _help_asked_after_subcommand(argv: list[str], namespace: Any) -> str | None:
    if argv and argv[0] in namespace.task_names and {"--help", "-h"} & set(argv[1:]):
        return argv[0]
    return None


def _join_subcollection(argv: list[str], namespace: Any) -> list[str]:
    """Accept ``config show`` for invoke's ``config.show``."""
    if len(argv) >= 2 and argv[0] in namespace.collections:
        sub = namespace.collections[argv[0]]
        if argv[1] in sub.task_names:
            return [f"{argv[0]}.{argv[1]}", *argv[2:]]
    return argv


program = PortunusProgram(
    name="portunus-server",
    binary="portunus-server",
    version=__version__,
    namespace=collection(),
)


def main() -> None:
    program.run()

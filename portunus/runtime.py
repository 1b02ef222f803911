"""What every command needs first: the data dir, the settings, the logging.

Shared by the ``portunus-server`` Program and plain ``invoke`` runs of the
same tasks; neither reads TOML itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, NamedTuple

from portunus import config, log
from portunus.datadir import DataDir, resolve_data_dir
from portunus.errors import UsageError


# A NamedTuple, not a frozen dataclass: defining a dataclass costs about a
# millisecond at every start (docs/performance.md, "Cold start").
class Runtime(NamedTuple):
    data_dir: DataDir
    settings: config.Settings
    log_format: str


def global_options(context: Any) -> dict[str, Any]:
    """The Program's global flags (``--data-dir`` ...), empty under plain invoke."""
    options = context.config.get("portunus") if context is not None else None
    return dict(options or {})


def build(options: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Runtime:
    """Resolve the config file and data dir, then configure logging.

    Order (first hit wins) for the data dir: --data-dir; ``data_dir`` in the
    file named by --config / $PORTUNUS_CONFIG; $STATE_DIRECTORY;
    $XDG_STATE_HOME/portunus; ~/.local/state/portunus. Without an explicit
    file, <data-dir>/server.toml is read when present.
    """
    env = os.environ if env is None else env
    flag_format = options.get("log_format")
    _check_log_format(flag_format)
    log.configure(flag_format or "logfmt")
    refuse_empty_paths(options)
    explicit = config.config_path(options.get("config"), env, None)
    settings = config.load(explicit, required=True) if explicit else config.defaults()
    data_dir = resolve_data_dir(options.get("data_dir"), settings.get("data_dir"), env)
    if explicit is None:
        # A data dir that is a file: say so, not "cannot read <file>/server.toml".
        data_dir.refuse_a_non_directory()
        settings = config.load(data_dir.config)
    log_format = flag_format or settings.get("log_format")
    log.configure(log_format, settings.get("log_level"))
    return Runtime(data_dir, settings, log_format)


def _check_log_format(value: str | None) -> None:
    if value is not None and value not in log.LOG_FORMATS:
        raise UsageError(f"--log-format must be one of {', '.join(log.LOG_FORMATS)}, got {value!r}")


def refuse_empty_paths(options: Mapping[str, Any]) -> None:
    """``--data-dir "$DIR"`` with DIR unset must not fall through to the
    default data dir: a ``reset --confirm`` there would wipe another store."""
    for key, flag in (("data_dir", "--data-dir"), ("config", "--config"), ("file", "--file")):
        if options.get(key) == "":
            raise UsageError(
                f"{flag} is empty; give a path (is the variable it came from set?)",
                hint=f"leave {flag} out to use the default resolution order",
            )

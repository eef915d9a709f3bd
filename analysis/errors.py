"""Error types for problems the user can fix, so callers and the CLI can print them as one line.

UserError is the base the CLI catches (exit status 2); its kinds are siblings:
- ConfigError: bad input (an option, a config value, a frame without the needed columns); also a
  ValueError, as bad values are.
- CheckpointError: a run's checkpoint cannot be read safely or does not fit the run.
- RunLocked: another live process holds a run folder's training lock.
Catch ConfigError for bad input only; a locked folder or a bad checkpoint is not bad input.
"""

import reprlib

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 160, 160, 60
_REPR.maxtuple = _REPR.maxlist = _REPR.maxarray = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 6
MAX_SHOWN = 200  # characters of a value an error message quotes


def shown(value) -> str:
    """repr(value) for an error message, bounded: at most MAX_SHOWN characters, computed without
    building the whole repr (a YAML value of many aliases may expand to gigabytes)."""
    text = _REPR.repr(value)
    return text if len(text) <= MAX_SHOWN else text[: MAX_SHOWN - 3] + "..."


class UserError(Exception):
    """A problem the user can fix; the message names what is wrong and what to do or what is allowed."""


class ConfigError(UserError, ValueError):
    """Bad user input: the message names what is wrong and what is allowed."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read safely; the message names the file and what to do."""


class RunLocked(UserError):
    """Another live process holds the run folder's training lock (one line naming it)."""


def one_of(what: str, value, allowed) -> ConfigError:
    """ConfigError for `value` not among `allowed`."""
    return ConfigError(f"unknown {what} {shown(value)}; allowed: {', '.join(map(str, allowed))}")

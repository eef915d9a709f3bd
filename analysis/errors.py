"""Error types for problems the user can fix, so callers and the CLI can print them as one line.

UserError is the base the CLI catches (exit status 2); its kinds are siblings:
- ConfigError: bad input (an option, a config value, a frame without the needed columns); also a
  ValueError, as bad values are.
- CheckpointError: a run's checkpoint cannot be read safely or does not fit the run.
- RunLocked: another live process holds a run folder's training lock.
Catch ConfigError for bad input only; a locked folder or a bad checkpoint is not bad input.
"""


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
    return ConfigError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")

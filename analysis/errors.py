"""One error type for bad input, so callers and the CLI can print it as one line."""


class ConfigError(ValueError):
    """Bad user input: the message names what is wrong and what is allowed."""


def one_of(what: str, value, allowed) -> ConfigError:
    """ConfigError for `value` not among `allowed`."""
    return ConfigError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")

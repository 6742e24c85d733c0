"""The one error type for bad user input (config files, CLI values, datasets)."""


class ConfigError(ValueError):
    """Bad input: a one-line message naming the file, key or value and what was expected.

    The CLI prints the message alone (no traceback) and exits with code 2.
    """

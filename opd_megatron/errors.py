"""The two failure kinds the CLI distinguishes (exit codes 2 and 1)."""


class ConfigError(Exception):
    """Bad input: a recipe key, a value, a file. One line naming the key or file and the fix.

    The CLI prints it without a traceback and exits 2; nothing has been written yet.
    """


class RuntimeFailure(Exception):
    """A failure while running (a server died past its retries, a NaN under stop policy). Exit 1."""

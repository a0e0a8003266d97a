"""Errors convpipe reports to users (bad files, bad inputs, bad artifacts): the CLI prints the message alone,
without a traceback, and exits with status 2."""


class ConvpipeError(Exception):
    """A user-facing error whose message names the offending thing (file, node, input; expected vs got)."""

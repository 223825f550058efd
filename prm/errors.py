"""The base class of mistakes a user can fix (a bad setting, a malformed data file)."""


class UserError(Exception):
    """A user mistake: shown as one readable line, exit status 2, traceback only with PRM_DEBUG=1."""

"""Errors that are the user's to fix (a bad setting, a bad input file), not bugs of the suite.

Entry points catch :class:`UserError` (see :func:`prm.config.user_error_exit`) and print its message
as one line, with exit status 2, instead of a traceback. Subclass it for every error whose message
alone tells the user what to change: the config's (:class:`ConfigError`, also importable from
:mod:`prm.config`) and the data
readers' (a file, a record and a field).
"""

from __future__ import annotations


class UserError(Exception):
    """An error the user fixes by changing a setting or an input; its message names what to change."""


class ConfigError(UserError, ValueError):
    """A config value or combination that cannot work; the message names the key and what to set."""

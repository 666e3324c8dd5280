"""The one exception type for bad input from a user.

It subclasses `ValueError`, so library callers can catch what they expect, while the
CLI turns it into a one-line message instead of a traceback.
"""


class UserError(ValueError):
    """Bad input that the user can fix: the message says what is wrong and what to do."""

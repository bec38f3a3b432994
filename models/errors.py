"""The one base of every failure a person can act on.

Each part raises its own subclass (``SuiteError``, ``StoreError``, ``DataError``,
``UnknownMixerError``, ...), whose message is one line saying what is wrong and where; the
command line catches this base alone and prints that line. It lives in ``models`` because
``models`` is the lowest package that raises such errors and may not import ``harness``.
A subclass may also derive from the builtin its callers already catch (``ValueError``,
``LookupError``).
"""


class MixbenchError(Exception):
    """An expected failure: its message is the one line the command line prints."""

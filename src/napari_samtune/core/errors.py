"""The one base class of the errors a user can fix.

Every error raised for the user's input (a model, image, prompt, cache, folder, adapter, training data or output that
cannot be used) derives from ``SamtuneError`` and says in its message what is wrong and what to do instead. The
command line ends with exit code 2 and that message; the widgets show it as a notification. Anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class SamtuneError(Exception):
    """A problem with the user's input; the message names it and the fix."""

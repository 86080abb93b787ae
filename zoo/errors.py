"""The one exception type for bad input.

Every check on user input (a dataset name, a file, a size, a test fraction) raises
:class:`InputError` with a message that names the input, the bound it broke and the fix.
The command line prints the message and exits with status 2, without a traceback.
"""


class InputError(ValueError):
    """Bad user input; the message says which input is wrong and how to fix it."""

"""The one exception this package raises for anything the user can fix."""


class ImageError(Exception):
    """A problem with a compiler, an image or an output path, worded for the user.

    The message is one line saying what is wrong and, where possible, what to do.
    """

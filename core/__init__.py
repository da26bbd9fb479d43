"""jailcc: a distributed C/C++ compile farm whose server jails every connection.

This package root holds only what every layer shares; the layers live in the subpackages
jailcc.sandbox, jailcc.server, jailcc.client and jailcc.images (see DESIGN.md, "Layout").
"""

__version__ = "0.1.0"

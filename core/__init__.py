"""jailcc: a distributed C/C++ compile farm whose server jails every connection.

This package root holds only what every layer shares; the layers live in the subpackages
jailcc.sandbox, jailcc.jobs, jailcc.server, jailcc.client and jailcc.images (see DESIGN.md,
"Layout").
"""

__version__ = "0.1.0"

# A toolchain image's name (its file name without .img): the server's catalog, the image
# directory and the privileged launcher all check it (a plain string: no `re` at import).
IMAGE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}"

# The read log (images/readlog.c): built into images made with --headers, preloaded by the jail
# into a gcc tree job's compile so that it reports every file it read and every name it missed.
READ_LOG_LIBRARY = "/usr/libexec/jailcc/readlog.so"

# `jailccd selftest`'s jobs_compile probe (monitor/jobs_probe.py hands the connection over,
# server/selftest_client.py plays the client): the compiler identity its connection and job
# name, and the hello its READY repeats. They need only agree.
SELFTEST_IDENTITY, SELFTEST_HELLO = "selftest", {"selftest": True}

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

# `jailccd selftest`'s jobs_compile probe (selftest/jobs_probe.py hands the connection over,
# selftest/client.py plays the client): the compiler identity its connection and job name, and
# the hello its READY repeats. They need only agree.
SELFTEST_IDENTITY, SELFTEST_HELLO = "selftest", {"selftest": True}

# `jailccd selftest`'s probes in the order they run (selftest/): the compile through a jail's
# jobs handler, then the escape probes. Here so that root's option parser can name them.
SELFTEST_PROBES = (
    "jobs_compile",
    "read_host_file",
    "write_image",
    "write_outside_workdir",
    "network",
    "host_processes",
    "uid0_caps",
    "setuid_binaries",
    "exec_writable",
    "new_userns",
    "mount",
    "chroot_escape",
    "ptrace",
    "devices",
    "device_nodes",
    "socket_families",
    "mount_table",
    "keyctl",
    "proc_sys_write",
    "memory",
    "fork_bomb",
    "fill_disk",
    "wall_clock",
    "cpu_time",
    "output_flood",
    "outlive_jail",
    "neighbour_jail",
    "init_isolation",
    "leftovers",
)

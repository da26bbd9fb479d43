"""jailcc.jobs: the compiler-aware code that runs INSIDE each connection's jail, unprivileged.

  session.py          one connection's jobs: unseal, decompress, parse and check each JOB
                      frame, ask the server for a slot, run the compile through the jail's
                      init (sandbox/jail_init.py), send the RESULT
  compiler_policy.py  which compiler arguments and environment a job may carry (the
                      allowlist over core/options.py), and the exact-debug-info merge
  tree.py             tree jobs (the user's own compile on shipped sources): what a tree
                      JOB may ask, the image's files as the jail sees them, which files the
                      compile read
  blobstore.py        the tree jobs' blobs, by content digest, for the jail's life
  handover.py         what the server hands the jobs handler with a connection (its name,
                      the parameters): plain data, the one module the server side imports

Root never runs this code. The launcher (sandbox/launcher.py) only reads the source of the
modules below and compiles it; each jail's init imports them from that copy in memory once it
has dropped its privileges (sandbox/jail_code.py). What they import besides comes from the
launcher's own modules (the jail's generic init, sandbox/spec.py, the package root and
core/wire.py) or from JAIL_LIBRARIES, which the launcher imports itself.

Dependencies: jailcc (core: options.py, protocol.py and the wire.py it builds on), and the
jail's init and spec (sandbox/jail_init.py, sandbox/spec.py), which every jail runs anyway;
never server/ or monitor/ (tests/test_layout.py checks).
"""

# The project modules a jail loads, served from memory: this package and everything of the
# project it imports that the launcher does not already hold (tests/test_jobs_loading.py checks
# that the list is complete). The jail's init imports them in this order.
JAIL_MODULES = (
    "jailcc.options",
    "jailcc.protocol",
    "jailcc.jobs",
    "jailcc.jobs.compiler_policy",
    "jailcc.jobs.handover",
    "jailcc.jobs.blobstore",
    "jailcc.jobs.tree",
    "jailcc.jobs.session",
)
# Libraries (no project code) the launcher imports before any jail forks: C extensions cannot
# be loaded after the jail's chroot. gssapi unseals the connection, lz4 decompresses frames,
# hashlib (OpenSSL's, or its own C modules) checks the tree jobs' blobs.
JAIL_LIBRARIES = ("gssapi", "gssapi.raw", "lz4.block", "hashlib")

"""jailccd's privileged side (root), besides the jail launcher in sandbox/:

- monitor.py: the request tables the unprivileged network service (server/) may ask, per
  connection and state: authentication, authorization, the hand-over to a jail.
"""

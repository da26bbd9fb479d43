"""jailccd's LDAP group lookups, run as a uid of their own (serve.py), started and asked by the
root monitor (monitor/authz.py); root never runs this package, so libldap, SASL and TLS never
parse the directory's bytes as root."""

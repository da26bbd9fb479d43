"""`jailccd selftest`'s probes: run as a uid of their own (driver.py), against a jail launcher
root started and handed over (monitor/cli.py); root never runs this package."""

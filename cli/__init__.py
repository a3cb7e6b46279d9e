"""The ``fleetd`` command line: a thin client of the daemon's socket API."""

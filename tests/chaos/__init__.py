"""Chaos tests on a real TLS deployment (a package, so its federation fixture is torn down
when its last test ends)."""

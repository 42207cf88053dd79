"""Trust: manifest, audit log, replay, report."""

"""One driver process controls groups of worker processes (veRL's "single controller")."""

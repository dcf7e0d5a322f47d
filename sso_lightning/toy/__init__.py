"""The embedded toy world: a verifiable task small enough to run SSO end to end on a CPU."""

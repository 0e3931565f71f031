"""One module per stage; each exposes `run(config, resume=False) -> Artifact`."""

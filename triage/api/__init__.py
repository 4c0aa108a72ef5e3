"""HTTP API: health and the reprioritized worklist."""

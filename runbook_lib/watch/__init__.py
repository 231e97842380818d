"""Watching a run: traffic probe, metrics sampler, gates, throttle, timeline, detached workers.

They use the engine only."""

"""Watching a run: the watchers (traffic probe, metrics sampler) and the watch slots move under, gates, the pace
(governor, throttle, window), the timeline, the latency verdict and the acceptance, detached workers.

They use the engine only."""

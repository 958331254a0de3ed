"""Benchmarks: latency percentiles, throughput, peak memory and cost-model figures per backend.

Modules: cases (what to run), runner (timing loop), child (one case per process), session
(run cases into records), records (dataclasses + JSON schema), report (markdown + plots),
env (device, driver, versions). ``pidtrt bench`` is the command line.
"""

"""``make bench``: how close the service comes to the accelerator's limit (issue 11).

Every figure is measured beside its reference in the same run, in interleaved rounds, and
reported as the median of its per-round ratio: this machine is shared and noisy, and a ratio
taken within one round cancels most of what the neighbours do. Nothing here is asserted; the
suite prints one table and writes it, with the machine's description, to docs/benchmarks.md.
Run alone: ``python -m benchmarks [--quick] [--out FILE]``.
"""

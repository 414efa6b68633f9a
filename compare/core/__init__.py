"""The core of the comparison: one runner, one protocol, one schema, one tolerance
rule, one element test (diff) and one place that builds rows (frame).

A new kind of module or site is described here (protocol, and the reference side in
bpcheck.reference); a new engine goes in compare.engines; a new output in compare.io.
"""

"""Engines: the ways a run's steps are produced for the core to compare.

The straightforward path (one autograd call per step) lives in compare.core.runner;
the fast ones here (lockstep replay, lean free running, the numpy twin and its forked
trajectory, stacked seeds) must give the same report, rows and verdicts.
"""

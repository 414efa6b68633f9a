"""Diagnosis beside the verdict: own or inherited errors (origin), the summary of a
report, numerics settings on record, and comparisons across device:dtype configurations.
"""

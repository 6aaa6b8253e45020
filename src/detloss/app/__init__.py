"""The application built on the library: trainer, CLI, demo, comparison, reference models,
dataset readers and the benchmark runner.

Nothing in the library core (geometry, targets, matching, losses, decoding, metrics)
imports from here; the application imports the core like any user would.
"""

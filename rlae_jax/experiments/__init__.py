"""Experiments over the engine: the embedded demo, strategy evaluation with reports, plots."""

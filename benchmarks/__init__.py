"""Benchmarks of the pipeline against baselines measured in the same run.

    python -m benchmarks.run [--quick] [--only GOAL] [--markdown PATH]

See ``benchmarks/run.py`` for the goals and how each is measured.
"""

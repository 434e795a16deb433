"""One module per goal: ``measure(context) -> Section`` in the harness, and the functions its
worker processes run."""

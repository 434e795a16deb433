"""Modules loaded when first used rather than when the definitions load.

Every run process, the code server and the daemon load the definitions, and polars would add
half of Dagster's own import time to each. The standard library's lazy loader stands in for the
module until an attribute of it is read. Modules take it from here (an ``import polars`` of
their own would read the stand-in's attributes, and so load it at once).
"""

import importlib.util
import sys
from types import ModuleType


def _deferred(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    loader = importlib.util.LazyLoader(spec.loader)
    spec.loader = loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


polars = _deferred("polars")

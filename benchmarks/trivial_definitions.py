"""A code location of one asset that does nothing but record a passing result of each of
``agent_metrics``'s checks, on its partitions: what a CLI run costs Dagster itself (goal 12's
baseline). It loads what the project's own definitions load to know its partitions and checks,
and nothing more. Loaded by ``dagster asset materialize -m benchmarks.trivial_definitions``."""

from collections.abc import Iterator

import dagster as dg

from agent_metrics_pipeline.core.partitions import daily_partitions
from agent_metrics_pipeline.core.settings import Settings
from agent_metrics_pipeline.quality.checks import check_specs

TRIVIAL_ASSET = "trivial_checked"


@dg.definitions
def defs() -> dg.Definitions:
    settings = Settings.from_env()
    partitions_def = daily_partitions(settings)
    specs = check_specs(TRIVIAL_ASSET, partitions_def, settings.measurement)

    @dg.asset(name=TRIVIAL_ASSET, partitions_def=partitions_def, check_specs=specs)
    def trivial_checked() -> Iterator[dg.Output | dg.AssetCheckResult]:
        yield dg.Output(None)
        for spec in specs:
            yield dg.AssetCheckResult(check_name=spec.name, passed=True)

    return dg.Definitions(assets=[trivial_checked], executor=dg.in_process_executor)

"""Nothing grows with the clock: every instance configuration purges the ticks of every schedule
and sensor, whatever their status, while runs and publication history are kept."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.ref import InstanceRef
from dagster._core.scheduler.instigation import TickStatus

from agent_metrics_pipeline_tests.helpers import DEV_INSTANCE_SETTINGS, REPO_ROOT

DEPLOY_SETTINGS = REPO_ROOT / "deploy" / "dagster.yaml"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
# Dagster's own name of each tick kind in dagster.yaml, and the Helm chart's.
KINDS = {"schedule": "schedule", "sensor": "sensor", "auto_materialize": "autoMaterialize"}


def retention_of(path) -> dict:
    return yaml.safe_load(path.read_text())["retention"]


@pytest.mark.parametrize(
    "instigator", [InstigatorType.SCHEDULE, InstigatorType.SENSOR, InstigatorType.AUTO_MATERIALIZE]
)
def test_the_development_instance_purges_every_tick_after_days(tmp_path, instigator):
    shutil.copy(DEV_INSTANCE_SETTINGS, tmp_path / "dagster.yaml")
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path))) as instance:
        kept = instance.get_tick_retention_settings(instigator)
    # Dagster's default keeps them forever (-1), which is what the settings change.
    assert set(kept) >= {TickStatus.SKIPPED, TickStatus.SUCCESS, TickStatus.FAILURE}
    assert all(0 < days < 400 for days in kept.values()), kept
    assert kept[TickStatus.SKIPPED] <= kept[TickStatus.SUCCESS] <= kept[TickStatus.FAILURE]


def test_production_and_helm_purge_as_the_development_instance_does():
    development = retention_of(DEV_INSTANCE_SETTINGS)
    assert retention_of(DEPLOY_SETTINGS) == development
    helm = retention_of(HELM_VALUES)
    assert helm.pop("enabled") is True
    assert helm == {
        KINDS[kind]: {"purgeAfterDays": policy["purge_after_days"]}
        for kind, policy in development.items()
    }
    # The chart's schema takes a policy by status only when every status is named.
    for policy in helm.values():
        assert set(policy["purgeAfterDays"]) == {"skipped", "started", "success", "failure"}

"""The UI for people who only look: a webserver started with ``--read-only`` beside the
operators' one, as deploy/compose.yaml and the Helm values set it up, and what it refuses."""

from __future__ import annotations

import pytest
import yaml

from agent_metrics_pipeline_tests.helpers import REPO_ROOT, dagster_ui, graphql

COMPOSE = REPO_ROOT / "deploy" / "compose.yaml"
HELM_VALUES = REPO_ROOT / "deploy" / "helm" / "values.yaml"
# Some of what the UI asks the webserver before it offers a button: launching, materializing,
# turning sensors and schedules on or off, terminating.
MUTATING_PERMISSIONS = {
    "launch_pipeline_execution",
    "launch_partition_backfill",
    "edit_sensor",
    "start_schedule",
    "terminate_pipeline_execution",
}
PERMISSIONS_QUERY = "{ permissions { permission value } }"


def test_compose_serves_a_read_only_webserver_beside_the_operators_one_on_loopback_only():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    operators, viewers = services["webserver"], services["webserver_read_only"]
    assert viewers["command"] == [*operators["command"], "--read-only"]
    assert "--read-only" not in operators["command"]
    # The same instance: the same image, settings and step logs.
    assert {key: viewers[key] for key in ("image", "env_file", "volumes", "environment")} == {
        key: operators[key] for key in ("image", "env_file", "volumes", "environment")
    }
    for service in (operators, viewers):
        (published,) = service["ports"]
        assert published.startswith("127.0.0.1:"), "no login of its own: only the proxy reaches it"


def test_the_helm_values_add_the_read_only_webserver_behind_authentication():
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["dagsterWebserver"]["enableReadOnly"] is True
    ingress = values["ingress"]
    assert ingress["enabled"] is True
    assert "nginx.ingress.kubernetes.io/auth-url" in ingress["annotations"]
    hosts = {ingress[ui]["host"] for ui in ("dagsterWebserver", "readOnlyDagsterWebserver")}
    assert len(hosts) == 2, "each UI on a host of its own, so the proxy can tell them apart"


@pytest.mark.e2e
@pytest.mark.parametrize(("flags", "allowed"), [((), True), (("--read-only",), False)])
def test_a_read_only_webserver_refuses_every_change_the_operators_one_allows(
    project_env, tmp_path, flags, allowed
):
    command = ["dagster-webserver", "-m", "agent_metrics_pipeline.definitions", *flags]
    with dagster_ui(command, project_env, tmp_path) as url:
        granted = {
            row["permission"]: row["value"]
            for row in graphql(f"{url}/graphql", PERMISSIONS_QUERY)["permissions"]
        }
        runs = graphql(f"{url}/graphql", "{ runsOrError { __typename } }")
    assert {name: granted[name] for name in MUTATING_PERMISSIONS} == dict.fromkeys(
        MUTATING_PERMISSIONS, allowed
    )
    if not allowed:
        assert not any(granted.values()), f"the read-only webserver allows some: {granted}"
    assert runs["runsOrError"]["__typename"] == "Runs", "runs are there to look at either way"

"""deploy/kubernetes: Kubernetes kinds validated by kubernetes-validate against the API's own
schemas, KEDA's ScaledObjects against a hand-written subset of KEDA's CRD schema, and the
properties a deployment relies on (a drain longer than the stage grace, one worker and one
scaler per stage on its RQ queue, Redis keeping its AOF on a volume and never evicting)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from cascade.stages import STAGES
from jobs.queues import queue_name
from jobs.settings import Settings

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES = "1.33.0"


def documents() -> list[dict]:
    kustomization = yaml.safe_load((ROOT / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        found += [doc for doc in yaml.safe_load_all((ROOT / name).read_text()) if doc]
    return found


def of_kind(kind: str) -> list[dict]:
    return [doc for doc in documents() if doc["kind"] == kind]


def test_kubernetes_kinds_validate() -> None:
    checked = 0
    for doc in documents():
        if doc["apiVersion"].startswith("keda.sh/"):
            continue
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any error
        checked += 1
    assert checked >= 8


def test_scaled_objects_validate_against_the_keda_schema() -> None:
    schema = json.loads((ROOT / "schema" / "keda-scaledobject.schema.json").read_text())
    assert "HAND-WRITTEN" in schema["$comment"]
    scaled = of_kind("ScaledObject")
    for doc in scaled:
        jsonschema.validate(doc, schema)
    with pytest.raises(jsonschema.ValidationError):  # the schema does reject a wrong field
        jsonschema.validate({**scaled[0], "spec": {**scaled[0]["spec"], "maxReplicas": 3}}, schema)
    targets = {doc["spec"]["scaleTargetRef"]["name"]: doc for doc in scaled}
    for stage in STAGES:
        trigger = targets[f"cascade-worker-{stage}"]["spec"]["triggers"][0]
        assert trigger["type"] == "redis"
        assert trigger["metadata"]["listName"] == f"rq:queue:{queue_name(stage)}"


def test_one_gpu_worker_per_stage_drains_before_it_is_killed() -> None:
    workers = {doc["metadata"]["name"]: doc for doc in of_kind("Deployment")}
    grace = Settings().stop_grace
    for stage in STAGES:
        spec = workers[f"cascade-worker-{stage}"]["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["args"] == ["worker", "--stages", stage]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        # SIGTERM: the stage's grace, then the hand-back; the pod must outlive both.
        assert spec["terminationGracePeriodSeconds"] >= grace + 30
        assert "--check" in container["livenessProbe"]["exec"]["command"]


def test_redis_keeps_an_append_only_file_on_a_volume_and_never_evicts() -> None:
    (redis,) = of_kind("StatefulSet")
    container = redis["spec"]["template"]["spec"]["containers"][0]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert container["volumeMounts"][0]["mountPath"] == "/data"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"

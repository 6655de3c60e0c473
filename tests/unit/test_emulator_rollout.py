"""The kubelet fixture's pure parts: ReplicaSet revisions (`rollout`) and pod metrics."""

from __future__ import annotations

import os
from typing import Any

from kuberde.testing import metrics, rollout
from kuberde.testing.kubelet import pod_template_hash


def deployment(image: str = "a:1") -> dict[str, Any]:
    return {
        "metadata": {
            "name": "op",
            "namespace": "ns",
            "uid": "d-uid",
            "annotations": {rollout.CHANGE_CAUSE: "set image"},
        },
        "spec": {
            "selector": {"matchLabels": {"app": "op"}},
            "template": {
                "metadata": {"labels": {"app": "op"}},
                "spec": {"containers": [{"name": "c", "image": image}]},
            },
        },
    }


def test_a_replica_set_is_the_template_under_its_hash_owned_by_the_deployment() -> None:
    owner = deployment()
    rs = rollout.replica_set(owner, "h1", 1, 2)
    assert rs["metadata"]["name"] == "op-h1"
    assert rs["metadata"]["annotations"] == {
        rollout.REVISION: "1",
        "deployment.kubernetes.io/desired-replicas": "2",
        rollout.CHANGE_CAUSE: "set image",
    }
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "op", "pod-template-hash": "h1"}
    assert rs["spec"]["template"]["metadata"]["labels"] == {"app": "op", "pod-template-hash": "h1"}
    assert owner["spec"]["template"]["metadata"]["labels"] == {"app": "op"}, "not changed"
    assert rollout.owned_by(owner, [rs]) == [rs]
    assert rollout.owned_by({"metadata": {"uid": "other"}}, [rs]) == []


def test_revisions_count_up_and_a_template_that_returns_takes_the_next() -> None:
    owner = deployment()
    first = rollout.replica_set(owner, "h1", rollout.next_revision([]), 1)
    second = rollout.replica_set(owner, "h2", rollout.next_revision([first]), 1)
    assert (rollout.revision(first), rollout.revision(second)) == (1, 2)
    assert rollout.promotion(second, [first]) is None, "already the latest"
    assert rollout.promotion(first, [second]) == {
        rollout.REVISION: "3",
        rollout.HISTORY: "1",
    }
    first["metadata"]["annotations"].update({rollout.REVISION: "3", rollout.HISTORY: "1"})
    second["metadata"]["annotations"][rollout.REVISION] = "4"
    assert rollout.promotion(first, [second]) == {rollout.REVISION: "5", rollout.HISTORY: "1,3"}


def test_a_malformed_revision_counts_as_none() -> None:
    assert rollout.revision({"metadata": {"annotations": {rollout.REVISION: "x"}}}) == 0
    assert rollout.revision({}) == 0


def test_a_template_sent_back_by_a_typed_client_keeps_its_hash() -> None:
    template = deployment()["spec"]["template"]
    typed = {
        "metadata": {"labels": {"app": "op"}, "creationTimestamp": None},
        "spec": {"containers": [{"name": "c", "image": "a:1", "resources": {}}]},
    }
    assert pod_template_hash(typed) == pod_template_hash(template)
    changed = deployment("a:2")["spec"]["template"]
    assert pod_template_hash(changed) != pod_template_hash(template)


def test_process_usage_is_cpu_time_over_the_process_lifetime() -> None:
    # utime 150 + stime 50 ticks = 2 s of CPU; started at tick 1000 (10 s), uptime 20 s.
    fields = ["S", *["0"] * 10, "150", "50", *["0"] * 6, "1000", "0"]
    stat = f"42 (a name) with) {' '.join(fields)}"
    usage = metrics.process_usage(
        stat, "100 25 0", uptime=20.0, ticks_per_second=100, page_size=4096
    )
    assert usage == metrics.Usage(200_000_000, 25 * 4096, 10.0), "0.2 cores, 25 pages"
    shown = metrics.pod_metrics({"metadata": {"name": "p", "namespace": "n"}}, {"c": usage})
    assert shown["containers"] == [{"name": "c", "usage": {"cpu": "200000000n", "memory": "100Ki"}}]
    assert shown["window"] == "10s"


def test_this_process_uses_memory_and_a_gone_one_nothing() -> None:
    assert metrics.read_usage(os.getpid()).memory_bytes > 0
    assert metrics.read_usage(2**22 + 1) == metrics.NONE

"""Drives a gyoza server the way the original Python CLI and worker did.

Usage: python3 scenario.py BASE_URL API_KEY. Exits non-zero on the first broken expectation.
"""

import sys

from gyoza_client import GyozaClient, HTTPStatusError


def expect_status(status, call, *args, **kwargs):
    try:
        call(*args, **kwargs)
    except HTTPStatusError as e:
        assert e.status_code == status, f"{call.__name__}: expected {status}, got {e.status_code} {e.body}"
        assert isinstance(e.body.get("detail"), str), e.body
        return e.body
    raise AssertionError(f"{call.__name__}: expected HTTP {status}, got success")


def main(base_url, api_key):
    client = GyozaClient(base_url, api_key)
    expect_status(401, GyozaClient(base_url, "wrong").list_definitions)

    op = {
        "id": "sugarcane_lines_product",
        "version": "1.2.0",
        "image": "geoiahub/sugarcane:1.2.0",
        "input_specs": {"tile": {"type": "str", "required": True}, "threshold": {"type": "float", "default": 0.5}},
        "output_specs": {"geojson": {"type": "str"}},
        "constraints": {"cpu": 2, "ram_mb": 2048, "vram_mb": None},
        "retry_policy": {"max_attempts": 2, "backoff_ms": 0},
        "event_delivery": {"topic": "", "attributes": {}},
    }
    created = client.upsert_definition(op)
    assert created["id"] == op["id"] and created["version"] == "1.2.0", created
    client.upsert_definition({**op, "version": "1.10.0", "image": "geoiahub/sugarcane:1.10.0"})
    assert client.get_definition(op["id"])["version"] == "1.10.0"
    assert client.get_definition(op["id"], version="1.2.0")["image"] == "geoiahub/sugarcane:1.2.0"
    assert len(client.list_definitions()) == 2
    expect_status(404, client.get_definition, "missing")

    run = client.create_run_from_definition(op["id"], {"tile": "T22KGA"}, version="1.2.0", priority=3)
    assert run["state"] == "PENDING" and run["inputs"] == {"tile": "T22KGA", "threshold": 0.5}, run
    assert run["constraints"]["ram_mb"] == 2048 and run["op_definition"] == op["id"], run
    body = expect_status(400, client.create_run_from_definition, op["id"], {"threshold": "high"})
    assert "tile" in body["detail"] and "threshold" in body["detail"], body
    expect_status(404, client.create_run_from_definition, "missing", {})

    adhoc = client.create_run("busybox:latest", {"param": "value"}, constraints={"ram_mb": 64})
    assert adhoc["priority"] == 5 and adhoc["op_definition"] is None, adhoc

    worker = client.heartbeat(
        "worker-gpu-01",
        {"cpu_cores": 8, "ram_mb": 32768, "gpus": [{"id": 0, "vram_mb": 8192, "tags": ["cuda"]}]},
        tags=["gpu"],
        running_ops=[],
    )
    assert worker["id"] == "worker-gpu-01", worker
    assert [w["id"] for w in client.list_workers()] == ["worker-gpu-01"]

    ops = client.claim_ops("worker-gpu-01")
    assert [o["id"] for o in ops] == [adhoc["id"]], ops  # priority 5 before 3
    assert set(ops[0]) >= {"id", "image", "inputs", "constraints"}, ops[0]
    ops = client.claim_ops("worker-gpu-01")
    assert [o["id"] for o in ops] == [run["id"]], ops

    client.add_event(run["id"], "STARTED", "container started", {"worker_id": "worker-gpu-01", "gpu_id": 0})
    client.add_event(run["id"], "PROGRESS", 50)
    client.add_event(run["id"], "INFO", "halfway there")
    expect_status(400, client.add_event, run["id"], "PROGRESS", 140)
    failed = client.add_event(run["id"], "FAILED", "boom", {"error_message": "exit code 3"})
    assert failed["state"] == "PENDING", failed  # one attempt left
    assert client.claim_ops("worker-gpu-01")[0]["id"] == run["id"]
    client.add_event(run["id"], "STARTED", "again", {"worker_id": "worker-gpu-01"})
    done = client.add_event(run["id"], "COMPLETED", "done", {"outputs": {"geojson": "{}"}})
    assert done["state"] == "COMPLETED" and done["outputs"] == {"geojson": "{}"}, done
    assert done["execution_summary"]["worker_id"] == "worker-gpu-01", done
    expect_status(400, client.add_event, run["id"], "INFO", "too late")

    events = client.poll_events(run["id"])["events"]
    assert [e["type"] for e in events] == ["RETRIED", "STARTED", "COMPLETED"], events
    assert set(events[0]) >= {"id", "type", "t", "msg", "state"}, events[0]
    assert [e["id"] for e in client.poll_events(run["id"], after=0)["events"]] == [1, 2]
    attempts = client.get_attempts(run["id"])
    assert [a["id"] for a in attempts] == [f"{run['id']}_att_1", f"{run['id']}_att_2"], attempts
    assert attempts[0]["state"] == "FAILED" and attempts[1]["state"] == "COMPLETED", attempts

    updated = client.update_run(adhoc["id"], priority=9, outputs={"note": "manual"})
    assert updated["priority"] == 9 and updated["outputs"] == {"note": "manual"}, updated
    expect_status(400, client.update_run, adhoc["id"], state="NOT_A_STATE")
    cancelled = client.update_run(adhoc["id"], state="CANCELLED")
    assert cancelled["state"] == "CANCELLED", cancelled
    retried = client.retry_run(adhoc["id"])
    assert retried["state"] == "PENDING" and retried["current_attempt"] == 2, retried
    expect_status(404, client.get_run, "missing")
    expect_status(404, client.retry_run, "missing")
    print("python client scenario: all expectations held")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

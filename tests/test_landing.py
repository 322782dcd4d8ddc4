"""The landing sensor: new file versions become partitions and runs, exactly once."""

import json
import os
import time

import dagster as dg

from curation_assets.definitions import build_resources
from curation_assets.raw_pool import LandingSensorConfig, landing_sensor


def tick(instance, resources, cursor):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    result = landing_sensor(context)
    # Apply what the daemon would: register the requested partitions.
    for request in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def write(path, rows, age=10):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    old = time.time() - age
    os.utime(path, (old, old))


def test_sensor_lands_new_files_once(tmp_path, instance):
    resources = build_resources(str(tmp_path / "home"))
    resources["landing"] = LandingSensorConfig(min_age_seconds=1)
    landing = resources["storage"].landing
    write(landing / "a.jsonl", [{"prompt": "p", "completion": "c"}])
    write(landing / "sub" / "b.jsonl", [{"prompt": "q", "completion": "d"}])
    write(landing / "b.jsonl.ingest.json.part", [])  # partial uploads and sidecars are not shards
    write(landing / ".hidden.jsonl", [])

    first = tick(instance, resources, None)
    keys = sorted(r.partition_key for r in first.run_requests)
    assert [k.split("@")[0] for k in keys] == ["a.jsonl", "sub__b.jsonl"]
    assert sorted(instance.get_dynamic_partitions("pool_shards")) == keys
    assert all(r.run_key == r.partition_key for r in first.run_requests)
    landed = resources["storage"].landed
    assert (landed / keys[0] / "a.jsonl").exists() and (landed / keys[0] / "landing.json").exists()

    # Same cursor, nothing new: no runs.
    second = tick(instance, resources, first.cursor)
    assert not second.run_requests and second.skip_reason

    # Rewriting identical content (new mtime) does nothing; neither does a copy under another name.
    write(landing / "a.jsonl", [{"prompt": "p", "completion": "c"}], age=5)
    write(landing / "copy_of_a.jsonl", [{"prompt": "p", "completion": "c"}])
    third = tick(instance, resources, second.cursor)
    assert not third.run_requests

    # A changed file under the same name is a new version beside the old one.
    write(landing / "a.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "p2", "completion": "c2"}], age=4)
    fourth = tick(instance, resources, third.cursor)
    [request] = fourth.run_requests
    assert request.partition_key.startswith("a.jsonl@") and request.partition_key not in keys
    assert len(instance.get_dynamic_partitions("pool_shards")) == 3
    assert (landed / keys[0] / "a.jsonl").read_text().count("\n") == 1  # old version untouched

    # Losing the cursor re-reads files but adds nothing twice.
    fifth = tick(instance, resources, None)
    assert not fifth.run_requests
    assert len(instance.get_dynamic_partitions("pool_shards")) == 3


def test_sidecar_change_is_a_new_version_and_young_files_wait(tmp_path, instance):
    resources = build_resources(str(tmp_path / "home"))
    resources["landing"] = LandingSensorConfig(min_age_seconds=3)
    landing = resources["storage"].landing
    write(landing / "q.csv", [], age=10)
    (landing / "q.csv").write_text("q,a\nWhy?,Because.\n")
    os.utime(landing / "q.csv", (time.time() - 10, time.time() - 10))
    first = tick(instance, resources, None)
    assert len(first.run_requests) == 1

    sidecar = landing / "q.csv.ingest.json"
    sidecar.write_text(json.dumps({"column_map": {"instruction": "q", "response": "a"}}))
    os.utime(sidecar, (time.time() - 10, time.time() - 10))
    second = tick(instance, resources, first.cursor)
    assert len(second.run_requests) == 1 and second.run_requests[0].partition_key != first.run_requests[0].partition_key
    landed_dir = resources["storage"].landed / second.run_requests[0].partition_key
    assert (landed_dir / "q.csv.ingest.json").exists()

    write(landing / "fresh.jsonl", [{"prompt": "p", "completion": "c"}], age=0)
    third = tick(instance, resources, second.cursor)
    assert not third.run_requests  # still being written, maybe

"""Monitoring files: written, parseable, naming every node, thresholds from arguments; validate() finds damage."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from runbook_lib.exceptions import BadInput
from runbook_lib.sections import monitoring

NODES = [
    {"address": "10.0.0.1:7000", "role": "master", "new": False},
    {"address": "10.0.0.2:7001", "role": "master", "new": False},
    {"address": "10.0.0.3:7002", "role": "master", "new": False},
    {"address": "10.0.0.4:7003", "role": "replica", "new": False},
    {"address": "10.0.0.5:7004", "role": "replica", "new": False},
    {"address": "10.0.0.6:7005", "role": "replica", "new": False},
    {"address": "10.0.0.7:7006", "role": "master", "new": True},
    {"address": "10.0.0.8:7007", "role": "replica", "new": True},
]
ADDRESSES = [n["address"] for n in NODES]
FILES = {"prometheus.yml", "alerts.yml", "grafana-dashboard.json", "client-seeds.txt", "client-seeds.json"}
GARBAGE = {
    "prometheus.yml": "scrape_configs: [unclosed\n  - : {\n",
    "alerts.yml": "groups:\n\t- bad: [indent\n",
    "grafana-dashboard.json": "{\"panels\": [ this is not json",
    "client-seeds.txt": "garbage without a port\n",
    "client-seeds.json": "{\"cluster\": ",
}


@pytest.fixture
def no_promtool(monkeypatch, tmp_path):
    """A PATH with no promtool on it."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    return monitoring.generate(tmp_path / "monitoring", NODES, cluster_name="prod-cache")


def _load(path: Path):
    return json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())


def _rules(files) -> dict[str, dict]:
    groups = _load(files["alerts.yml"])["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def _fake_promtool(bin_dir: Path, exit_code: int, message: str) -> Path:
    """A promtool stand-in that logs its arguments and exits with exit_code."""
    bin_dir.mkdir(exist_ok=True)
    log = bin_dir / "calls.log"
    script = bin_dir / "promtool"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\necho "{message}"\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return log


def test_generate_writes_every_file_into_a_new_folder_and_each_parses(tmp_path):
    out = tmp_path / "deep" / "monitoring"
    files = monitoring.generate(out, NODES)
    assert set(files) == FILES
    for name, path in files.items():
        assert path == out / name and path.is_file()
        if path.suffix != ".txt":
            assert _load(path), name


def test_prometheus_uses_the_exporter_multi_target_pattern(files):
    config = _load(files["prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    targets = jobs["redis_exporter_targets"]
    assert config["rule_files"] == ["alerts.yml"]
    assert targets["metrics_path"] == "/scrape"
    relabel = targets["relabel_configs"]
    assert relabel[0] == {"source_labels": ["__address__"], "target_label": "__param_target"}
    assert relabel[1]["source_labels"] == ["__param_target"] and relabel[1]["target_label"] == "instance"
    assert relabel[-1] == {"target_label": "__address__", "replacement": "redis-exporter:9121"}
    assert jobs["redis_exporter"]["static_configs"][0]["targets"] == ["redis-exporter:9121"]


def test_prometheus_has_one_labelled_target_per_node(files):
    config = _load(files["prometheus.yml"])
    static = next(j for j in config["scrape_configs"] if j["job_name"] == "redis_exporter_targets")["static_configs"]
    assert [s["targets"] for s in static] == [[f"redis://{a}"] for a in ADDRESSES]
    by_target = {s["targets"][0]: s["labels"] for s in static}
    assert by_target["redis://10.0.0.7:7006"] == {"cluster": "prod-cache", "role": "master", "new_node": "true"}
    assert by_target["redis://10.0.0.4:7003"] == {"cluster": "prod-cache", "role": "replica", "new_node": "false"}
    assert all(isinstance(v, str) for labels in by_target.values() for v in labels.values())


def test_exporter_port_offset_sends_each_node_to_its_own_exporter(tmp_path):
    files = monitoring.generate(tmp_path, NODES[:2], exporter_port_offset=2121)
    jobs = {j["job_name"]: j for j in _load(files["prometheus.yml"])["scrape_configs"]}
    static = jobs["redis_exporter_targets"]["static_configs"]
    assert [s["labels"]["__exporter_address"] for s in static] == ["10.0.0.1:9121", "10.0.0.2:9122"]
    assert jobs["redis_exporter_targets"]["relabel_configs"][-1] == {
        "source_labels": ["__exporter_address"], "target_label": "__address__"}
    assert jobs["redis_exporter"]["static_configs"][0]["targets"] == ["10.0.0.1:9121", "10.0.0.2:9122"]
    assert "redis-exporter:9121" not in files["prometheus.yml"].read_text()


def test_alerts_cover_the_expected_conditions_with_metadata(files):
    rules = _rules(files)
    expected = {"RedisClusterStateNotOk", "RedisClusterSlotsFail", "RedisClusterSlotsPfail", "RedisMasterLinkDown",
                "RedisInstanceDown", "RedisMemoryHigh", "RedisReplicationLagHigh", "RedisLatencyHigh", "RedisCpuHigh"}
    assert expected <= set(rules)
    assert "redis_cluster_state" in rules["RedisClusterStateNotOk"]["expr"]
    assert rules["RedisClusterSlotsFail"]["labels"]["severity"] == "critical"
    assert rules["RedisClusterSlotsPfail"]["labels"]["severity"] == "warning"
    for name, rule in rules.items():
        assert rule["for"] and rule["labels"]["severity"] in ("critical", "warning"), name
        assert "{{ $labels.instance }}" in rule["annotations"]["summary"], name
        assert "{{ $labels.instance }}" in rule["annotations"]["description"], name
        assert 'cluster="prod-cache"' in rule["expr"], name


def test_default_thresholds_are_the_runbook_gates(files):
    rules = _rules(files)
    assert rules["RedisCpuHigh"]["expr"].endswith("> 0.7")
    assert rules["RedisMemoryHigh"]["expr"].endswith("> 0.8")
    assert rules["RedisLatencyHigh"]["expr"].endswith("> 0.005")
    assert rules["RedisReplicationLagHigh"]["expr"].endswith("> 0.5")


def test_thresholds_given_as_arguments_appear_in_the_expressions(tmp_path):
    files = monitoring.generate(tmp_path, NODES, cpu_pct=55, memory_pct=90, avg_latency_ms=12,
                                replication_lag_ms=2000)
    rules = _rules(files)
    assert rules["RedisCpuHigh"]["expr"].endswith("> 0.55")
    assert rules["RedisMemoryHigh"]["expr"].endswith("> 0.9")
    assert rules["RedisLatencyHigh"]["expr"].endswith("> 0.012")
    assert rules["RedisReplicationLagHigh"]["expr"].endswith("> 2")
    assert "55 %" in rules["RedisCpuHigh"]["annotations"]["summary"]


def test_memory_alert_ignores_nodes_without_maxmemory(files):
    expr = _rules(files)["RedisMemoryHigh"]["expr"]
    assert "redis_memory_used_bytes" in expr and '(redis_memory_max_bytes{cluster="prod-cache"} > 0)' in expr


def test_dashboard_names_every_node_and_has_the_panels(files):
    text = files["grafana-dashboard.json"].read_text()
    board = json.loads(text)
    for address in ADDRESSES:
        assert address in text
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert [o["value"] for o in variables["instance"]["options"]] == ADDRESSES
    assert board["__inputs"][0]["name"] == "DS_PROMETHEUS" and 38 <= board["schemaVersion"] <= 40
    titles = {p["title"] for p in board["panels"]}
    assert {"Cluster state", "Slots ok / fail / pfail", "Ops/s per instance", "Memory used vs max",
            "Connected clients", "Replication lag", "Average command latency"} <= titles
    assert any(t.startswith("CPU") for t in titles)
    queried = [p for p in board["panels"] if "targets" in p]
    assert all(p["datasource"]["uid"] == "${DS_PROMETHEUS}" for p in queried)
    assert all(t["expr"] for p in queried for t in p["targets"])


def test_dashboard_panels_do_not_overlap(files):
    cells = set()
    for p in _load(files["grafana-dashboard.json"])["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, p["title"]
        cells |= area


def test_client_seeds_list_masters_first_then_every_node(files):
    lines = files["client-seeds.txt"].read_text().splitlines()
    masters = [n["address"] for n in NODES if n["role"] == "master"]
    replicas = [n["address"] for n in NODES if n["role"] == "replica"]
    assert lines == masters + replicas
    assert _load(files["client-seeds.json"]) == {"cluster": "prod-cache", "seed_nodes": masters + replicas}


def test_ipv6_addresses_are_bracketed_everywhere(tmp_path):
    files = monitoring.generate(tmp_path, [{"address": "::1:7000", "role": "master", "new": True}])
    assert files["client-seeds.txt"].read_text() == "[::1]:7000\n"
    assert "redis://[::1]:7000" in files["prometheus.yml"].read_text()


@pytest.mark.parametrize("nodes, problem", [
    ([], "no nodes"),
    ([{"address": "10.0.0.1", "role": "master"}], "host:port"),
    ([{"address": "10.0.0.1:7000", "role": "leader"}], "role"),
    ([{"address": "10.0.0.1:7000", "role": "master", "new": "yes"}], "new must be"),
    ([NODES[0], dict(NODES[0], role="replica")], "listed twice"),
])
def test_bad_nodes_are_refused_before_anything_is_written(tmp_path, nodes, problem):
    with pytest.raises(BadInput, match=problem):
        monitoring.generate(tmp_path / "out", nodes)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, problem", [
    ({"cluster_name": 'bad"name'}, "cluster name"),
    ({"exporter_address": "no-port"}, "exporter address"),
    ({"exporter_port_offset": 60000}, "out of range"),
    ({"cpu_pct": 0}, "cpu_pct"),
])
def test_bad_options_are_refused(tmp_path, kwargs, problem):
    with pytest.raises(BadInput, match=problem):
        monitoring.generate(tmp_path, NODES, **kwargs)


def test_validate_passes_generated_files_and_warns_without_promtool(files, no_promtool):
    rows = monitoring.validate(files)
    assert not [r for r in rows if r["status"] == "fail"]
    assert {r["file"] for r in rows} == FILES
    coverage = {r["file"] for r in rows if r["check"] == "names every node" and r["status"] == "pass"}
    assert coverage == {"prometheus.yml", "grafana-dashboard.json", "client-seeds.txt"}
    warned = [r for r in rows if r["status"] == "warn"]
    assert {r["file"] for r in warned} == {"prometheus.yml", "alerts.yml"}
    assert all(r["detail"] == "promtool not installed; structural checks only" for r in warned)


@pytest.mark.parametrize("name", sorted(FILES))
def test_validate_fails_a_corrupted_file(files, no_promtool, name):
    files[name].write_text(GARBAGE[name])
    rows = monitoring.validate(files)
    failed = [r for r in rows if r["status"] == "fail"]
    assert failed and {r["file"] for r in failed} == {name}, failed
    assert any(r["check"] in ("parses", "structure") for r in failed)


def test_validate_fails_a_missing_file(files, no_promtool):
    files["alerts.yml"].unlink()
    rows = monitoring.validate(files)
    assert [(r["file"], r["status"]) for r in rows if r["status"] == "fail"] == [("alerts.yml", "fail")]


def test_validate_fails_a_rule_without_expr(files, no_promtool):
    alerts = _load(files["alerts.yml"])
    del alerts["groups"][0]["rules"][2]["expr"]
    files["alerts.yml"].write_text(yaml.safe_dump(alerts, sort_keys=False))
    failed = [r for r in monitoring.validate(files) if r["status"] == "fail"]
    assert [(r["file"], r["check"]) for r in failed] == [("alerts.yml", "structure")]
    assert "needs alert and expr" in failed[0]["detail"]


def test_validate_fails_when_a_node_is_missing_from_the_scrape_config(files, no_promtool):
    config = _load(files["prometheus.yml"])
    config["scrape_configs"][0]["static_configs"].pop()
    files["prometheus.yml"].write_text(yaml.safe_dump(config, sort_keys=False))
    failed = [r for r in monitoring.validate(files) if r["status"] == "fail"]
    assert [(r["file"], r["check"]) for r in failed] == [("prometheus.yml", "names every node")]
    assert ADDRESSES[-1] in failed[0]["detail"]


def test_validate_fails_when_the_dashboard_forgets_a_node(files, no_promtool):
    path = files["grafana-dashboard.json"]
    path.write_text(path.read_text().replace(ADDRESSES[0], "10.9.9.9:7000"))
    failed = [r for r in monitoring.validate(files) if r["status"] == "fail"]
    assert [(r["file"], r["check"]) for r in failed] == [("grafana-dashboard.json", "names every node")]
    assert ADDRESSES[0] in failed[0]["detail"]


def test_validate_runs_promtool_when_it_is_on_path(files, tmp_path, monkeypatch):
    log = _fake_promtool(tmp_path / "bin", 0, "SUCCESS")
    monkeypatch.setenv("PATH", str(tmp_path / "bin") + os.pathsep + os.environ.get("PATH", ""))
    rows = monitoring.validate(files)
    promtool = {r["check"]: r for r in rows if r["check"].startswith("promtool")}
    assert {c: r["status"] for c, r in promtool.items()} == {"promtool check config": "pass",
                                                             "promtool check rules": "pass"}
    assert promtool["promtool check config"]["detail"] == "SUCCESS"
    assert log.read_text().splitlines() == [f"check config {files['prometheus.yml']}",
                                            f"check rules {files['alerts.yml']}"]


def test_validate_records_a_promtool_failure(files, tmp_path, monkeypatch):
    _fake_promtool(tmp_path / "bin", 1, "FAILED: bad expression")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    rows = monitoring.validate(files)
    failed = [r for r in rows if r["status"] == "fail"]
    assert {r["check"] for r in failed} == {"promtool check config", "promtool check rules"}
    assert all("FAILED: bad expression" in r["detail"] for r in failed)

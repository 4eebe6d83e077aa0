"""The Prometheus alert rules: promtool accepts them, their unit tests pass
and catch deliberately broken versions, and they query only metrics the
service exports."""

import shutil
import subprocess

import pytest
import yaml

from project import ALERTS, ALERTS_TEST, CHART, PROMETHEUS_CONFIG, ROOT
from service import SERVICE_METRIC

# Each broken version of the rules (text replaced, what for) must make
# `promtool test rules` fail.
MUTATIONS = [
    pytest.param("(14.4 * 0.001)", "(144 * 0.001)", id="page threshold 14.4x -> 144x"),
    pytest.param("(6 * 0.001)", "(60 * 0.001)", id="6h/30m threshold 6x -> 60x"),
    pytest.param("ratio_rate5m > (14", "ratio_rate1h > (14", id="short window 5m replaced by 1h"),
    pytest.param("ratio_rate3d > 0.001", "ratio_rate3d > 0.01", id="3d/6h threshold 1x -> 10x"),
    pytest.param("|Unavailable|", "|", id="Unavailable not counted as an error"),
    pytest.param(") > 0.25\n", ") > 0.1\n", id="latency threshold 0.25s -> 0.1s"),
    pytest.param('absent(up{job=~".*user-service.*"} == 1)', 'absent(up{job=~".*user-service.*"})',
                 id="absent() without == 1"),
    pytest.param('replicas_unavailable{deployment=~".*user-service.*"} > 0',
                 'replicas_unavailable{deployment=~".*user-service.*"} > 1', id="unready replicas threshold"),
    pytest.param("          > 0.01\n", "          > 0.5\n", id="spans lost threshold 1% -> 50%"),
    pytest.param('exported_total{outcome="ok"}[10m]', 'exported_total[10m]', id="failed exports counted as delivered"),
]


def promtool_run(promtool, *args):
    return subprocess.run([promtool, *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def assert_ok(result, what):
    assert result.returncode == 0, f"{what} failed:\n{result.stdout}{result.stderr}"


def test_alerts_are_a_symlink_to_the_chart_copy():
    """The chart can only read files inside itself (.Files.Get), so the one
    source of the rules is there; a copy elsewhere could drift."""
    canonical = CHART / "files/alerts.yaml"
    assert ALERTS.is_symlink(), f"{ALERTS.relative_to(ROOT)} is not a symlink to {canonical.relative_to(ROOT)}"
    assert ALERTS.resolve() == canonical.resolve(), f"{ALERTS.relative_to(ROOT)} points at {ALERTS.resolve()}"


def test_promtool_check_rules(promtool):
    assert_ok(promtool_run(promtool, "check", "rules", ALERTS), f"promtool check rules {ALERTS.name}")


def test_promtool_test_rules(promtool):
    assert_ok(promtool_run(promtool, "test", "rules", ALERTS_TEST), f"promtool test rules {ALERTS_TEST.name}")


def test_promtool_check_config(promtool):
    assert_ok(promtool_run(promtool, "check", "config", PROMETHEUS_CONFIG), f"promtool check config {PROMETHEUS_CONFIG.name}")


@pytest.fixture(scope="module")
def mutant_runs(promtool, tmp_path_factory):
    """`promtool test rules` of every broken version that applies, all
    started at once: each takes seconds, and a test waits only for its own.
    Yields (process, its output file) by (old, new)."""
    rules = ALERTS.read_text()
    runs = {}
    for old, new in (param.values for param in MUTATIONS):
        if old not in rules:
            continue
        work = tmp_path_factory.mktemp("mutant")
        (work / "alerts.yaml").write_text(rules.replace(old, new))
        shutil.copy(ALERTS_TEST, work / "alerts_test.yaml")
        with open(work / "promtool.out", "w") as out:
            process = subprocess.Popen([promtool, "test", "rules", str(work / "alerts_test.yaml")],
                                       stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        runs[(old, new)] = process, work / "promtool.out"
    yield runs
    for process, _ in runs.values():
        if process.poll() is None:
            process.kill()
        process.wait()


@pytest.mark.parametrize(("old", "new"), MUTATIONS)
def test_rule_tests_catch(mutant_runs, old, new):
    """The unit tests must fail for a broken expression, or they test
    nothing."""
    assert (old, new) in mutant_runs, f"the mutation {old!r} -> {new!r} no longer applies to {ALERTS.name}: update it"
    process, output = mutant_runs[(old, new)]
    returncode = process.wait(timeout=300)
    assert returncode != 0, f"promtool test rules passes with {old!r} -> {new!r}: no test covers it"
    assert "FAILED" in output.read_text(), f"refused, but not by a failing test:\n{output.read_text()}"


def rule_expressions():
    with open(ALERTS) as f:
        return [(rule.get("alert") or rule["record"], rule["expr"])
                for group in yaml.safe_load(f)["groups"] for rule in group["rules"]]


def test_rules_query_only_exported_metrics(exported_metrics):
    """A renamed or dropped metric would leave an alert that never fires."""
    unknown = [f"{name} queries {metric}, which the service does not export"
               for name, expr in rule_expressions() for metric in SERVICE_METRIC.findall(expr)
               if metric not in exported_metrics]
    assert not unknown, "\n".join(unknown)

"""Fixtures of the deployment tests: the tools (paths passed by
scripts/test-deploy.sh in the environment, else found in PATH), Helm
renderings made once per session and argument list, and the metric names
a running user-service exports."""

import os
import shutil
import subprocess

import pytest

import service
from manifests import Manifests, load_all
from project import template_args


def find_tool(name, env_var):
    """A tool's path; its absence fails the test, since nothing here may be
    skipped."""
    path = os.environ.get(env_var) or shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found (${env_var} or PATH): `make test` (scripts/test-deploy.sh) installs it",
                    pytrace=False)
    return path


class Helm:
    """Runs helm. `template` answers are cached by argument list: several
    tests read the same rendering, and rendering is most of the run time."""

    def __init__(self, path):
        self.path = path
        self._templates = {}

    def run(self, *args, env=None):
        return subprocess.run([self.path, *map(str, args)], capture_output=True, text=True, env=env)

    def template(self, *args):
        key = tuple(map(str, args))
        if key not in self._templates:
            self._templates[key] = self.run("template", *key)
        return self._templates[key]

    def rendered(self, *args):
        """The output of `helm template ARGS`, which must succeed."""
        result = self.template(*args)
        assert result.returncode == 0, f"helm template {' '.join(map(str, args))} failed:\n{result.stderr}"
        return result.stdout


@pytest.fixture(scope="session")
def helm():
    return Helm(find_tool("helm", "HELM"))


@pytest.fixture(scope="session")
def promtool():
    return find_tool("promtool", "PROMTOOL")


@pytest.fixture(scope="session")
def render_set(helm):
    """VALUE_SET -> its Manifests, rendered and parsed once per session."""
    parsed = {}

    def render(value_set):
        if value_set not in parsed:
            text = helm.rendered(*template_args(value_set))
            try:
                parsed[value_set] = Manifests(value_set, load_all(text))
            except Exception as e:  # yaml's errors: duplicate keys, syntax
                pytest.fail(f"{value_set}: the rendered YAML does not load: {e}", pytrace=False)
        return parsed[value_set]

    return render


@pytest.fixture(scope="session")
def exported_metrics(tmp_path_factory):
    """Every sample name on a running user-service's /metrics, after one
    call of each kind so that the gRPC families (unary and streaming) have
    series; the store's families come from its health checks and pool."""
    grpcurl = find_tool("grpcurl", "GRPCURL")
    binary = service.find_or_build_binary()
    running = service.RunningService(binary, tmp_path_factory.mktemp("service") / "user-service.log")
    try:
        running.call(grpcurl, "grpc.health.v1.Health/Check")
        running.call(grpcurl, "user.v1.UserService/ListUsers")
        yield service.metric_names(running.scrape())
    finally:
        running.stop()

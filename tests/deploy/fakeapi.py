"""A stand-in Kubernetes API server on a free loopback port that knows at
most one Deployment: enough for Helm's `lookup` under `helm template
--dry-run=server`, which takes everything else from its built-in
capabilities."""

import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

APPS_V1_RESOURCES = {
    "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "apps/v1",
    "resources": [{"name": "deployments", "singularName": "deployment", "namespaced": True,
                   "kind": "Deployment", "verbs": ["get", "list"]}],
}


def deployment_path(namespace, name):
    return f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}"


def handler_for(namespace, name, replicas, requests):
    """A request handler serving the Deployment NAME with REPLICAS (None: it
    does not exist); every GET path is appended to REQUESTS."""

    class Handler(BaseHTTPRequestHandler):
        def reply(self, code, body):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):
            path = self.path.split("?")[0]
            requests.append(path)
            if path == "/apis/apps/v1":
                self.reply(200, APPS_V1_RESOURCES)
            elif path == deployment_path(namespace, name) and replicas is not None:
                self.reply(200, {"apiVersion": "apps/v1", "kind": "Deployment",
                                 "metadata": {"name": name, "namespace": namespace},
                                 "spec": {"replicas": replicas}})
            else:
                self.reply(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound",
                                 "code": 404, "message": f"{path} not found"})

        def log_message(self, *args):
            pass

    return Handler


@contextmanager
def fake_api(namespace, name, replicas):
    """Serves while the block runs; yields (server URL, requested paths)."""
    requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(namespace, name, replicas, requests))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join()

"""Authentication with a Secret the operator brings (auth.existingSecret):
the chart creates none, mounts that one, and a token minted with
`user-service token` from the same secret works through the Service while
one signed with another secret does not.
"""

import json
import os
import secrets
import tempfile

from kube import (
    assert_nothing_left,
    CHART, IMAGE_VALUES, REPO, PortForward, grpcurl, helm, kubectl, kubectl_json, namespace, run,
    wait_all_ready,
)

NS = "it-auth"
REL = "auth"
NAME = "auth-user-service"


def user_service_bin() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return os.path.join(target, "release", "user-service")


def local_token(secret: str, sub: str, *roles: str) -> str:
    """`user-service token` on this machine, the secret read from a file."""
    with tempfile.NamedTemporaryFile("w") as f:
        f.write(secret)
        f.flush()
        args = [user_service_bin(), "token", "--sub", sub, "--ttl", "15m"]
        for r in roles:
            args += ["--role", r]
        out = run(args, quiet=True, env={"USER_SERVICE__AUTH__ENABLED": "true",
                                         "USER_SERVICE__AUTH__JWT_SECRET_FILE": f.name}).stdout.strip()
    assert out.count(".") == 2
    return out


def test_existing_secret_is_used():
    secret = secrets.token_hex(32)
    with namespace(NS) as ns:
        kubectl("-n", ns, "create", "secret", "generic", "my-jwt", f"--from-literal=signing-key={secret}", quiet=True)
        helm("install", REL, str(CHART), "-n", ns, *IMAGE_VALUES, "--set", "auth.existingSecret=my-jwt",
             "--set", "auth.key=signing-key", "--wait", "--timeout", "3m")
        wait_all_ready(ns, REL, 1)
        names = [s["metadata"]["name"] for s in kubectl_json("-n", ns, "get", "secrets")["items"]]
        assert f"{NAME}-jwt" not in names, "the chart generated a secret although existingSecret is set"
        vols = kubectl_json("-n", ns, "get", "deploy", NAME)["spec"]["template"]["spec"]["volumes"]
        assert {"secretName": "my-jwt"}.items() <= next(v["secret"] for v in vols if v["name"] == "jwt-secret").items()
        good = local_token(secret, "ops", "admin")
        bad = local_token(secrets.token_hex(32), "ops", "admin")
        with PortForward(ns, f"svc/{NAME}", 50051) as pf:
            addr = pf.addr(50051)
            uid = json.loads(grpcurl(addr, "user.v1.UserService/CreateUser", {
                "email": "lin@example.com", "name": "Lin", "password": "correct horse battery"}).stdout)["id"]
            assert uid in grpcurl(addr, "user.v1.UserService/ListUsers", {"page_size": 10}, token=good).stdout
            p = grpcurl(addr, "user.v1.UserService/ListUsers", {"page_size": 10}, token=bad, check=False)
            assert p.returncode != 0 and "Unauthenticated" in p.stderr
        helm("uninstall", REL, "-n", ns, "--wait", "--timeout", "2m")
        assert_nothing_left(REL)

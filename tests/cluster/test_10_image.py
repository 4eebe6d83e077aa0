"""The images the cluster runs match what the project ships.

deploy/Dockerfile is the release image; deploy/cluster/image.sh rebuilds
its runtime layout without Docker. These tests fail when the two disagree
on user, entrypoint, command, exposed ports or the files copied in, or when
the helm test image is not the grpc-health-probe version the project pins.
"""

import json
import re
import shlex

from kube import CACHE_ROOT, CHART, FIGURES, GRPC_HEALTH_PROBE_VERSION, REPO, run

IMAGES = CACHE_ROOT / "images"


def dockerfile_runtime() -> dict:
    """USER, ENTRYPOINT, CMD, EXPOSE and COPY destinations of the last stage."""
    text = (REPO / "deploy" / "Dockerfile").read_text()
    # Continuation lines joined; comments dropped.
    lines = re.sub(r"\\\n", " ", text).splitlines()
    stages: list[list[str]] = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    out = {"user": None, "entrypoint": None, "cmd": None, "expose": set(), "files": set()}
    for line in stages[-1]:
        op, _, arg = line.partition(" ")
        op = op.upper()
        if op == "USER":
            out["user"] = arg.strip()
        elif op in ("ENTRYPOINT", "CMD"):
            out[op.lower()] = json.loads(arg) if arg.strip().startswith("[") else ["/bin/sh", "-c", arg]
        elif op == "EXPOSE":
            out["expose"] |= {p if "/" in p else f"{p}/tcp" for p in arg.split()}
        elif op == "COPY":
            words = [w for w in shlex.split(arg) if not w.startswith("--")]
            out["files"].add(words[-1])
    return out


def oci_config(name: str) -> dict:
    layout = IMAGES / name / "oci"
    index = json.loads((layout / "index.json").read_text())
    (manifest_desc,) = [m for m in index["manifests"] if m.get("annotations", {}).get(
        "org.opencontainers.image.ref.name") != "latest"]

    def blob(desc):
        algo, digest = desc["digest"].split(":")
        return json.loads((layout / "blobs" / algo / digest).read_text())

    return blob(blob(manifest_desc)["config"])


def test_app_image_matches_dockerfile():
    want = dockerfile_runtime()
    cfg = oci_config("app")["config"]
    assert cfg["User"] == want["user"], "user differs from deploy/Dockerfile"
    assert cfg["Entrypoint"] == want["entrypoint"], "entrypoint differs from deploy/Dockerfile"
    assert cfg["Cmd"] == want["cmd"], "command differs from deploy/Dockerfile"
    assert set(cfg.get("ExposedPorts", {})) == want["expose"], "exposed ports differ from deploy/Dockerfile"
    rootfs = IMAGES / "app" / "bundle" / "rootfs"
    for f in want["files"]:
        p = rootfs / f.lstrip("/")
        assert p.is_file(), f"{f} (COPY in deploy/Dockerfile) is not in the image"
        assert p.stat().st_mode & 0o111, f"{f} is not executable"
    # The chart runs it as this user, with a read-only root.
    assert want["user"].split(":")[0] == "65532"
    size = (IMAGES / "app" / "image.tar").stat().st_size
    unpacked = sum(p.stat().st_size for p in rootfs.rglob("*") if p.is_file())
    FIGURES["user-service:dev image"] = f"{size / 1e6:.1f} MB OCI archive (gzip layer), {unpacked / 1e6:.1f} MB unpacked"


def test_app_image_runs_from_its_own_libraries():
    """The binary starts with only the image's files (as distroless cc
    would provide them): `/user-service --version` in a chroot."""
    rootfs = IMAGES / "app" / "bundle" / "rootfs"
    out = run(["chroot", "--userspec=65532:65532", str(rootfs), "/user-service", "--version"]).stdout
    assert "user-service" in out
    run(["chroot", "--userspec=65532:65532", str(rootfs), "/userctl", "--version"])


def test_probe_image_is_the_pinned_grpc_health_probe():
    values = (CHART / "values.yaml").read_text()
    tag = re.search(r"^tests:\n(?:.*\n)*?\s+tag: (\S+)", values, re.M).group(1)
    deps = (REPO / "scripts" / "install-test-deps.sh").read_text()
    pinned = re.search(r"^GRPC_HEALTH_PROBE_VERSION=(\S+)", deps, re.M).group(1)
    assert tag == pinned == GRPC_HEALTH_PROBE_VERSION, (
        f"chart tests.image.tag {tag}, install-test-deps.sh {pinned}, deploy/cluster {GRPC_HEALTH_PROBE_VERSION}")
    cfg = oci_config("probe")["config"]
    assert cfg["User"] == "65532:65532"
    (entry,) = cfg["Entrypoint"]
    rootfs = IMAGES / "probe" / "bundle" / "rootfs"
    out = run(["chroot", "--userspec=65532:65532", str(rootfs), entry, "-version"], check=False)
    assert GRPC_HEALTH_PROBE_VERSION.lstrip("v") in out.stdout + out.stderr

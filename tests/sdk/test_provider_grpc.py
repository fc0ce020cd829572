"""`kvbridge provider` called by gRPC's C-core client (Python grpcio), stubs generated here from
the provider's proto with grpcio-tools.

C-core sends the socket path as the HTTP/2 :authority (percent-encoded), which the Rust HTTP/2
server refuses as malformed unless the provider repairs it; the Secrets Store CSI Driver (Go)
sends "localhost". Every gRPC client must be served (issue 12.5).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_tools import protoc

from conftest import REPO, SECRET_SP, SECRET_SP_SECRET, SEEDED_SECRET, SEEDED_VALUE, VAULT

PROTO_DIR = REPO / "crates" / "provider" / "proto"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    rc = protoc.main(
        ["protoc", f"-I{PROTO_DIR}", f"--python_out={out}", f"--grpc_python_out={out}", "service.proto"]
    )
    assert rc == 0, "grpcio-tools could not compile the provider proto"
    sys.path.insert(0, str(out))
    import service_pb2
    import service_pb2_grpc

    yield service_pb2, service_pb2_grpc
    sys.path.remove(str(out))


@pytest.fixture(scope="module")
def provider(dv, tmp_path_factory):
    binary = Path(dv.proc.args[0])
    root = tmp_path_factory.mktemp("provider")
    socket = root / "azure.sock"
    log_path = root / "provider.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "provider",
            "--endpoint",
            f"unix://{socket}",
            "--healthz-port",
            "0",
            "--metrics-port",
            "0",
            "--cloud-env-file",
            dv.ready["cloud_env_file"],
            "--ca-file",
            dv.ca,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 30
        while not socket.exists():
            assert proc.poll() is None, log_path.read_text(errors="replace")
            assert time.time() < deadline, "provider socket did not appear"
            time.sleep(0.05)
        yield f"unix://{socket}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_version_and_mount_from_a_c_core_client(dv, stubs, provider):
    pb, pb_grpc = stubs
    with grpc.insecure_channel(provider) as channel:
        stub = pb_grpc.CSIDriverProviderStub(channel)
        # Several calls on one connection: the repaired :authority must stay consistent with
        # the HPACK table across requests.
        for _ in range(3):
            v = stub.Version(pb.VersionRequest(version="v1alpha1"), timeout=10)
            assert v.runtime_name == "kvbridge"
        attrs = {
            "keyvaultName": VAULT,
            "tenantID": dv.tenant,
            "objects": f"array:\n  - |\n    objectName: {SEEDED_SECRET}\n    objectType: secret\n",
            "csi.storage.k8s.io/pod.name": "py-client",
            "csi.storage.k8s.io/pod.namespace": "default",
        }
        resp = stub.Mount(
            pb.MountRequest(
                attributes=json.dumps(attrs),
                secrets=json.dumps({"clientid": SECRET_SP, "clientsecret": SECRET_SP_SECRET}),
                target_path="/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/kv/mount",
                permission="420",
            ),
            timeout=30,
        )
        files = {f.path: f for f in resp.files}
        assert files[SEEDED_SECRET].contents.decode() == SEEDED_VALUE
        assert files[SEEDED_SECRET].mode == 0o644
        assert [o.id for o in resp.object_version] == [f"secret/{SEEDED_SECRET}"]

        attrs["objects"] = "arrray: []"
        with pytest.raises(grpc.RpcError) as err:
            stub.Mount(pb.MountRequest(attributes=json.dumps(attrs), permission="420"), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "did you mean array?" in err.value.details()

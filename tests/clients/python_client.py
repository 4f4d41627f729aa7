"""An independent gRPC client (Python's grpcio) against obhostd.

Compiles the contract in proto/ with grpcio-tools, then checks that the wire
contract works from another implementation: unary calls, error codes, enums,
maps, durations and a server stream. Usage: python_client.py ADDR PROTO_DIR HOME
"""
import os
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc


def compile_protos(proto_dir, out):
    files = [os.path.join(proto_dir, "obhost/v1", f) for f in
             ("steps.proto", "observer.proto", "host.proto", "host_agent.proto")]
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}",
                      f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)


def main():
    addr, proto_dir, home = sys.argv[1:4]
    out = tempfile.mkdtemp()
    compile_protos(proto_dir, out)
    from obhost.v1 import host_agent_pb2 as pb, host_agent_pb2_grpc as rpc
    from obhost.v1 import steps_pb2

    # addr is obhostd's socket (unix:/path), dialled with grpcio's defaults, as
    # an orchestrator's developer would: grpcio then sends the percent-encoded
    # path as the HTTP/2 :authority, which obhostd accepts on its socket.
    stub = rpc.HostAgentStub(grpc.insecure_channel(addr))
    if addr.startswith("unix:"):
        # What other clients send there: the raw path (grpc-java), a host name.
        for authority in (addr[len("unix:"):], "localhost", "a b%zz"):
            other = grpc.insecure_channel(addr, options=[("grpc.default_authority", authority)])
            rpc.HostAgentStub(other).GetHostInfo(pb.GetHostInfoRequest())
            other.close()
    host = stub.GetHostInfo(pb.GetHostInfoRequest()).host
    assert host.cpus > 0 and host.memory_total_bytes > 0, host
    assert host.boot_id == open("/proc/sys/kernel/random/boot_id").read().strip()

    try:
        stub.GetStep(pb.GetStepRequest(step_id="no-such-step"))
        sys.exit("GetStep of an unknown id succeeded")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.NOT_FOUND, e
    try:
        stub.GetStep(pb.GetStepRequest(step_id="../x"))
        sys.exit("a bad step id was accepted")
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e

    meta = steps_pb2.StepMeta(step_id="py-stop", dag_id="py")
    meta.timeout.FromSeconds(30)
    req = pb.StopObserverRequest(meta=meta, home_path=home)
    req.grace.FromSeconds(1)
    first = stub.StopObserver(req).step
    assert first.id == "py-stop" and first.kind == steps_pb2.STEP_KIND_STOP_OBSERVER_PROCESS, first
    # The stream: the current record first, then changes, until it is terminal.
    deadline = time.time() + 20
    for item in stub.WatchSteps(pb.WatchStepsRequest(step_ids=["py-stop"]), timeout=20):
        step = item.step
        if step.state in (steps_pb2.STEP_STATE_SUCCEEDED, steps_pb2.STEP_STATE_FAILED):
            break
        assert time.time() < deadline
    assert step.state == steps_pb2.STEP_STATE_SUCCEEDED, step
    assert step.outputs["already_stopped"] == "true", step.outputs
    assert step.timeout.seconds == 30 and step.revision >= first.revision
    listed = stub.ListSteps(pb.ListStepsRequest(dag_id="py")).steps
    assert [s.id for s in listed] == ["py-stop"], listed
    print("python grpcio client: all checks passed")


if __name__ == "__main__":
    main()

"""An independent StepReporter server (Python's grpcio) for obhostd's [report].

Compiles the contract in proto/ with grpcio-tools, serves StepReporter on
127.0.0.1:PORT and prints one JSON line per call (with the time it came), so a
test can check what obhostd pushes from another implementation than ours.
With --fail CODE it answers every call with that gRPC status instead, which is
how a test watches obhostd back off; with --delay SECONDS it answers each call
that long after it came (a slow orchestrator).

Usage: python_sink.py PROTO_DIR PORT [--fail unavailable | --delay 2]
"""
import json
import os
import sys
import tempfile
import time
from concurrent import futures

import grpc
from grpc_tools import protoc


def compile_protos(proto_dir, out):
    files = [os.path.join(proto_dir, "obhost/v1", f) for f in
             ("steps.proto", "step_reporter.proto")]
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"-I{well_known}",
                      f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if rc != 0:
        sys.exit(f"protoc failed: {rc}")
    sys.path.insert(0, out)


def main():
    # A port (served on 127.0.0.1), or unix:/path.
    proto_dir, addr = sys.argv[1], sys.argv[2]
    if not addr.startswith("unix:"):
        addr = f"127.0.0.1:{int(addr)}"
    flag = sys.argv[3] if len(sys.argv) > 4 else None
    fail = sys.argv[4].upper() if flag == "--fail" else None
    delay = float(sys.argv[4]) if flag == "--delay" else 0.0
    out = tempfile.mkdtemp()
    compile_protos(proto_dir, out)
    from obhost.v1 import step_reporter_pb2 as pb, step_reporter_pb2_grpc as rpc
    from obhost.v1 import steps_pb2

    class Sink(rpc.StepReporterServicer):
        def ReportSteps(self, request, context):
            line = {
                "at": time.time(),
                "agent_id": request.agent_id,
                "after_revision": request.after_revision,
                "dropped": request.dropped,
                "hostname": request.host.hostname,
                "version": request.host.version,
                "steps": [{"id": s.id, "revision": s.revision,
                           "state": steps_pb2.StepState.Name(s.state)} for s in request.steps],
            }
            print(json.dumps(line), flush=True)
            if fail:
                context.abort(getattr(grpc.StatusCode, fail), "told to fail")
            time.sleep(delay)
            return pb.ReportStepsResponse()

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    rpc.add_StepReporterServicer_to_server(Sink(), server)
    server.add_insecure_port(addr)
    server.start()
    print(json.dumps({"listening": addr}), flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()

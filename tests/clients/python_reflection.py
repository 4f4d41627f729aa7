"""Python's grpcio-reflection (which asks reflection v1alpha) against obhostd:
lists the services, then resolves HostAgent's methods and a message from the
descriptors obhostd serves, with no proto file at hand. Prints one JSON
document; the Rust test (tests/cross_client.rs) judges it.

usage: python_reflection.py ADDR   (unix:/path or host:port)
"""

import json
import sys

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)


def main() -> None:
    addr = sys.argv[1]
    # grpcio's defaults: on a Unix socket it sends the %-encoded path as the
    # HTTP/2 :authority, which obhostd accepts there.
    with grpc.insecure_channel(addr) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        pool = DescriptorPool(db)
        agent = pool.FindServiceByName("obhost.v1.HostAgent")
        step = pool.FindMessageTypeByName("obhost.v1.Step")
        print(
            json.dumps(
                {
                    "services": services,
                    "methods": [m.name for m in agent.methods],
                    "step_fields": [f.name for f in step.fields],
                }
            )
        )


if __name__ == "__main__":
    main()

"""A minimal CRI client (runtime.v1.RuntimeService over gRPC), as kubelet talks to containerd.

api.proto (next to this file) is a subset of kubernetes/cri-api's runtime.v1 with the upstream field
numbers. It is compiled on first use with grpc_tools.protoc into a temporary directory, imported under
a private module name and the directory removed: generated code always matches the installed protobuf
runtime (checked-in *_pb2.py files break when protobuf moves a major version), and compiling takes
about 0.1 s. The stubs are built here from the service descriptor, so no *_pb2_grpc module is needed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import threading
import uuid

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "api.proto")
_MODULE = "podnet_tests_cri_api_pb2"
_lock = threading.Lock()


class MissingDependency(RuntimeError):
    pass


def _import_grpc():
    try:
        import grpc
        from grpc_tools import protoc
    except ImportError as e:
        raise MissingDependency(
            f"the runtime tests need grpcio and grpcio-tools ({e}); `make test` installs them "
            "(pip install -e '.[test]')") from e
    return grpc, protoc


def api():
    """The compiled api.proto module (compiled once per process)."""
    with _lock:
        if _MODULE in sys.modules:
            return sys.modules[_MODULE]
        _, protoc = _import_grpc()
        out = tempfile.mkdtemp(prefix="podnet-cri-proto-")
        try:
            # The proto's file name inside protobuf's descriptor pool is "podnet_tests_cri_api.proto",
            # so it cannot collide with any other "api.proto" a process may load.
            src = os.path.join(out, "podnet_tests_cri_api.proto")
            shutil.copyfile(PROTO, src)
            include = os.path.join(os.path.dirname(protoc.__file__), "_proto")
            code = protoc.main(["grpc_tools.protoc", f"-I{out}", f"-I{include}", f"--python_out={out}", src])
            if code != 0:
                raise RuntimeError(f"protoc failed on {PROTO} (exit {code})")
            spec = importlib.util.spec_from_file_location(_MODULE, os.path.join(out, "podnet_tests_cri_api_pb2.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules[_MODULE] = module
            return module
        finally:
            shutil.rmtree(out, ignore_errors=True)


class CriClient:
    """CRI calls by name: client.RunPodSandbox(pb.RunPodSandboxRequest(...)), plus helpers."""

    def __init__(self, socket_path: str, timeout: float = 60.0):
        grpc, _ = _import_grpc()
        self.pb = api()
        self.timeout = timeout
        self._grpc = grpc
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self._calls = {}
        for service in self.pb.DESCRIPTOR.services_by_name.values():  # RuntimeService, ImageService
            for method in service.methods:
                request = getattr(self.pb, method.input_type.name)
                response = getattr(self.pb, method.output_type.name)
                self._calls[method.name] = self.channel.unary_unary(
                    f"/{service.full_name}/{method.name}",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString,
                )

    def __getattr__(self, name):
        calls = self.__dict__.get("_calls", {})
        if name in calls:
            call = calls[name]
            return lambda request, timeout=None: call(request, timeout=timeout or self.timeout)
        raise AttributeError(name)

    def close(self) -> None:
        self.channel.close()

    @property
    def RpcError(self):
        return self._grpc.RpcError

    # Helpers ---------------------------------------------------------------

    def version(self):
        return self.Version(self.pb.VersionRequest(version="v1"))

    def sandbox_config(self, name: str | None = None, namespace: str = "default", labels: dict | None = None):
        pb = self.pb
        name = name or f"pod-{uuid.uuid4().hex[:8]}"
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=str(uuid.uuid4()), namespace=namespace, attempt=0),
            hostname=name,
            labels=labels or {},
            linux=pb.LinuxPodSandboxConfig(security_context=pb.LinuxSandboxSecurityContext(
                namespace_options=pb.NamespaceOption(network=pb.POD, pid=pb.POD, ipc=pb.POD))),
        )

    def run_sandbox(self, name: str | None = None, namespace: str = "default", labels: dict | None = None) -> str:
        config = self.sandbox_config(name, namespace, labels)
        return self.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config)).pod_sandbox_id

    def sandbox_status(self, sandbox_id: str, verbose: bool = False):
        return self.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose))

    def sandbox_info(self, sandbox_id: str) -> dict:
        """containerd's verbose record of the sandbox: pid, runtimeSpec, cniResult, ..."""
        info = self.sandbox_status(sandbox_id, verbose=True).info
        return json.loads(info["info"]) if "info" in info else {}

    def stop_sandbox(self, sandbox_id: str) -> None:
        self.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove_sandbox(self, sandbox_id: str) -> None:
        self.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def sandboxes(self) -> list:
        return list(self.ListPodSandbox(self.pb.ListPodSandboxRequest()).items)

    def status(self, verbose: bool = False):
        return self.Status(self.pb.StatusRequest(verbose=verbose))

    def conditions(self) -> dict[str, bool]:
        return {c.type: c.status for c in self.status().status.conditions}

    def image_id(self, image: str) -> str:
        """The image's id if the runtime has it, else ''."""
        return self.ImageStatus(self.pb.ImageStatusRequest(image=self.pb.ImageSpec(image=image))).image.id

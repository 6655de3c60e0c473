"""A whole KubeRDE installation on the emulated API server, driven with the real `kubectl`.

`installed_cluster` does what the README's install does, with `kubectl` verbatim:
`kubectl apply -k deploy/`, the signing-key Secret, `kubectl apply -f deploy/examples/`.
The kubelet fixture (`kuberde.testing.kubelet`) then runs the gateway (`frp-server`), the
operator and every workspace's agent as real processes, so `kubectl logs`, `kubectl get`,
`kubectl delete pod` and `kubectl set image` act on real components.

Workspace images (sshd, Jupyter) do not run here: each agent's workspace ports lead to one
local echo server instead (the agent's `PORT_MAP`). The operator's loops run with short
intervals (`OPERATOR_ARGS`), which the runbook tests say where a runbook timing is longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock

from kuberde.auth.keys import SigningKey
from kuberde.testing.kube import RDEAGENTS, ApiServer, emulator, write_kubeconfig
from kuberde.testing.kubelet import ContainerExtras, Kubelet

__all__ = [
    "NAMESPACE",
    "OPERATOR_ARGS",
    "Cluster",
    "CommandResult",
    "installed_cluster",
    "kubectl_path",
]

NAMESPACE = "kuberde"
REPOSITORY = Path(__file__).resolve().parents[3]
#: The operator's loops, compressed: monitor 0.5 s, TTL sweep 2 s, status 0.5 s, resync 5 s.
OPERATOR_ARGS = (
    "--monitor-interval",
    "0.5",
    "--ttl-interval",
    "2",
    "--status-interval",
    "0.5",
    "--resync-interval",
    "5",
)
COMMAND_TIMEOUT = 60.0


def kubectl_path() -> str | None:
    """The `kubectl` on PATH (or in /usr/bin), if any."""
    return shutil.which("kubectl") or shutil.which("kubectl", path="/usr/bin")


@dataclass(frozen=True)
class CommandResult:
    command: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stdout.splitlines()


@dataclass
class Cluster:
    """The installed system: the API server, its kubelet, and a shell with `kubectl`."""

    server: ApiServer
    url: str
    kubelet: Kubelet
    kubeconfig: Path
    home: Path
    signing_key: SigningKey
    echo_port: int

    @property
    def env(self) -> dict[str, str]:
        kubectl = kubectl_path()
        path = os.environ.get("PATH", "")
        if kubectl is not None:
            path = f"{Path(kubectl).parent}:{path}"
        return {
            "PATH": path,
            "HOME": str(self.home),
            "KUBECONFIG": str(self.kubeconfig),
            "LANG": "C.UTF-8",
            "TERM": "dumb",
        }

    async def sh(
        self,
        command: str,
        *,
        stop_after: float = COMMAND_TIMEOUT,
        cwd: Path | None = None,
        typed: bytes | None = None,
    ) -> CommandResult:
        """Run a shell command line (a runbook command verbatim); stdin is never a TTY.

        A command still running after `stop_after` seconds is killed with what it printed
        kept: that is how a test reads `kubectl logs -f` or `watch`. `typed` is what the
        user types into it (`kubectl exec -it … -- /bin/sh`), then the end of input.
        """
        process = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            env=self.env,
            cwd=cwd or self.home,
            stdin=asyncio.subprocess.DEVNULL if typed is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert process.stdout is not None and process.stderr is not None
        if typed is not None:
            assert process.stdin is not None
            process.stdin.write(typed)
            await process.stdin.drain()
            process.stdin.close()
        # Read as it comes: what a stopped command printed must not be lost with it.
        reading = asyncio.gather(process.stdout.read(), process.stderr.read())
        try:
            await asyncio.wait_for(process.wait(), stop_after)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            await process.wait()
        stdout, stderr = await reading
        return CommandResult(
            command,
            process.returncode or 0,
            stdout.decode(errors="replace"),
            stderr.decode(errors="replace"),
        )

    async def kubectl(self, *args: str) -> CommandResult:
        """`kubectl ARGS…`, failing loudly if kubectl does."""
        result = await self.sh(" ".join(_quote(arg) for arg in ("kubectl", *args)))
        if result.returncode != 0:
            raise AssertionError(f"{result.command} failed: {result.stderr or result.stdout}")
        return result

    # ---- direct reads of the store ------------------------------------------------------

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        stored = self.server.find(resource, NAMESPACE, name)
        return None if stored is None else stored.raw

    def agent_status(self, name: str) -> Mapping[str, Any]:
        return (self.get(RDEAGENTS, name) or {}).get("status") or {}

    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.kubelet.local_port('frp-server', 8080)}"

    def operator_health_url(self) -> str:
        return f"http://127.0.0.1:{self.kubelet.local_port('kuberde-operator', 8080)}"


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


async def _echo_server() -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-emulated-workspace\r\n")
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _extras(echo_port: int, operator_args: tuple[str, ...]) -> Any:
    def extras(deployment: Mapping[str, Any], container: Mapping[str, Any]) -> ContainerExtras:
        labels = deployment["spec"]["template"]["metadata"].get("labels") or {}
        if labels.get("app") == "kuberde-operator":
            env = {
                "KUBERDE_OPERATOR_LISTEN": "127.0.0.1:{port:8080}",
                # The operator reaches the gateway by loopback; agents' Deployments keep the
                # in-cluster address the kubelet maps when it starts them.
                "KUBERDE_AGENT_SERVER_URL": "http://frp-server.kuberde.svc:8080",
            }
            return ContainerExtras(args=operator_args, env=env)
        if labels.get("app") == "frp-agent":
            env = {item["name"]: item.get("value", "") for item in container.get("env") or []}
            ports = [port for port in env.get("ALLOWED_PORTS", "").split(",") if port]
            port_map = ",".join(f"{port}={echo_port}" for port in ports)
            return ContainerExtras(env={"PORT_MAP": port_map} if port_map else {})
        return ContainerExtras()

    return extras


@contextlib.asynccontextmanager
async def installed_cluster(
    work_dir: Path,
    *,
    examples: bool = True,
    operator_args: tuple[str, ...] = OPERATOR_ARGS,
) -> AsyncIterator[Cluster]:
    """The emulated cluster with KubeRDE installed as the README says (see module docstring)."""
    server = emulator()
    echo = await _echo_server()
    echo_port = int(echo.sockets[0].getsockname()[1])
    home = work_dir / "home"
    home.mkdir(parents=True, exist_ok=True)
    async with server, kmock.Server(server) as http_server:
        url = str(http_server.url).rstrip("/")
        kubeconfig = work_dir / "kubeconfig"
        write_kubeconfig(kubeconfig, url, NAMESPACE)
        kubelet = Kubelet(
            server,
            NAMESPACE,
            work_dir / "pods",
            kubeconfig,
            extras=_extras(echo_port, operator_args),
        )
        key = SigningKey.generate()
        cluster = Cluster(server, url, kubelet, kubeconfig, home, key, echo_port)
        task = asyncio.create_task(kubelet.run(), name="kubelet")
        try:
            key_file = work_dir / "signing-key.pem"
            key_file.write_bytes(key.to_pem())
            await cluster.kubectl("apply", "-k", str(REPOSITORY / "deploy"))
            # The README's command (kubectl sends it as protobuf), with the key the tests hold.
            await cluster.kubectl(
                "-n",
                NAMESPACE,
                "create",
                "secret",
                "generic",
                "kuberde-signing-key",
                f"--from-file=signing-key.pem={key_file}",
            )
            if examples:
                await cluster.kubectl("apply", "-f", str(REPOSITORY / "deploy" / "examples"))
            yield cluster
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await kubelet.close()
            echo.close()
            await echo.wait_closed()

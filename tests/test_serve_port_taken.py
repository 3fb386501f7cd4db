"""`vmem serve` on a port another process listens on: refused with what to do, before the encoder's warm-up."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests._reliability_fixtures import VMEM, subprocess_env, tiny_memory
from tests.conftest import REPO
from vmem.cli._common import TemporaryFailure
from vmem.cli.serve import _check_port_free

API_KEY = "a-key-of-at-least-16-characters"


def test_a_port_already_taken_is_refused_saying_which_and_what_to_do(tmp_path, encoder):
    # A second `vmem serve` on the default port (another memory served there already) warmed its encoder up, then
    # met uvicorn's "[Errno 98] error while attempting to bind ... address already in use" and exited 3, a status
    # the README's list does not have. Now it is refused before the warm-up, saying which port and what to do,
    # exit 75 (a resource another process holds, as a memory open elsewhere), the memory closed and let go.
    location = tmp_path / "memory"
    tiny_memory(encoder, str(location)).close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*VMEM, "serve", "--memory", str(location), "--port", str(port)], cwd=REPO,
                              env=subprocess_env(VMEM_API_KEY=API_KEY, COLUMNS="250"), capture_output=True,
                              text=True, timeout=180)
    said = done.stderr
    assert done.returncode == 75, said
    assert f"port {port} of 127.0.0.1 is taken by another process" in said, said
    assert "--port" in said and "Errno 98" not in said and "Application startup" not in said, said
    assert not (location / ".vmem-served.json").exists()


def _listening(host: str, family: socket.AddressFamily) -> socket.socket:
    sock = socket.socket(family)
    if family == socket.AF_INET6:  # as uvicorn (asyncio's create_server) listens on an IPv6 address
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, 0))
    sock.listen()
    return sock


@pytest.mark.skipif(not socket.has_ipv6, reason="no IPv6 here")
def test_a_port_taken_on_ipv4_only_is_free_for_a_service_on_ipv6():
    # uvicorn listens on `--host ::` with IPv6 alone (asyncio sets IPV6_V6ONLY), so another service on 0.0.0.0 of
    # the same port does not stop it. The check bound `::` for both families, and refused such a port: a service
    # that would have started was told the port was taken (exit 75). Now it binds as uvicorn does.
    try:
        on_ipv4 = _listening("0.0.0.0", socket.AF_INET)
    except OSError:
        pytest.skip("no IPv4 here")
    with on_ipv4:
        _check_port_free("::", on_ipv4.getsockname()[1])  # free for a service on IPv6
        with pytest.raises(TemporaryFailure, match="is taken by another process"):
            _check_port_free("0.0.0.0", on_ipv4.getsockname()[1])
    try:
        on_ipv6 = _listening("::", socket.AF_INET6)
    except OSError:
        pytest.skip("IPv6 cannot be bound here")
    with on_ipv6, pytest.raises(TemporaryFailure, match=f"port {on_ipv6.getsockname()[1]} of :: is taken"):
        _check_port_free("::", on_ipv6.getsockname()[1])

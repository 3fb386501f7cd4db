"""`vmem serve` on a port another process listens on: refused with what to do, before the encoder's warm-up."""

from __future__ import annotations

import socket
import subprocess

from tests._reliability_fixtures import VMEM, subprocess_env, tiny_memory
from tests.conftest import REPO

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

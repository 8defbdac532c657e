"""A notebook executed the way JupyterLab executes it: a real Jupyter server started headlessly, a
session and kernel opened through its REST API, every cell sent over the kernel's websocket."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import nbformat
import pytest
import websocket
from conftest import write_idx

from reproduce.runner import REPO

TOKEN = "reproduce-test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    def __init__(self, root):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", f"--port={self.port}",
             "--ip=127.0.0.1", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # the kernel draws with Jupyter's inline backend, as a user's does, not the suite's Agg
            env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"})
        for _ in range(120):
            try:
                self.api("GET", "/api/status")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("the Jupyter server did not start")

    def api(self, method, path, body=None):
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode(),
                                         headers={"Authorization": f"token {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as reply:
            text = reply.read()
            return json.loads(text) if text else None

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)


def execute(ws, session: str, code: str, timeout: float = 600) -> list[dict]:
    """Send one execute_request (Jupyter messaging protocol, JSON over the websocket) and collect its
    outputs until the kernel is idle again."""
    msg_id = uuid.uuid4().hex
    ws.send(json.dumps({"header": {"msg_id": msg_id, "msg_type": "execute_request", "session": session,
                                   "username": "test", "version": "5.3"},
                        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
                        "content": {"code": code, "silent": False, "store_history": True, "user_expressions": {},
                                    "allow_stdin": False, "stop_on_error": True}}))
    outputs, deadline = [], time.time() + timeout
    while time.time() < deadline:
        msg = json.loads(ws.recv())
        if msg.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = msg["header"]["msg_type"]
        if kind in ("stream", "display_data", "execute_result", "error"):
            outputs.append({"type": kind, **msg["content"]})
        if kind == "status" and msg["content"]["execution_state"] == "idle":
            return outputs
    raise TimeoutError(code[:80])


@pytest.mark.slow
def test_notebook_01_runs_through_a_jupyter_server(tmp_path):
    data = tmp_path / "data"
    write_idx(data, "MNIST", n_train=300, n_test=100)
    parameters = (f"profile = 'smoke'\ndataset = 'fashion-mnist'\ndevice = 'cpu'\n"
                  f"runs_dir = {str(tmp_path / 'runs')!r}\n"
                  f"data_dir = {str(data)!r}\nfigures_dir = {str(tmp_path / 'figures')!r}\n"
                  "profile_overrides = {'width': 4, 'epochs': 1, 'test_limit': 40, 'tsne_points': 40}\n"
                  "objectives = 'authors'\n")
    nb = nbformat.read(REPO / "notebooks" / "01_losses.ipynb", as_version=4)
    server = JupyterServer(REPO / "notebooks")
    try:
        session = server.api("POST", "/api/sessions", {"path": "01_losses.ipynb", "type": "notebook",
                                                       "kernel": {"name": "python3"}})
        kernel = session["kernel"]["id"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/api/kernels/{kernel}/channels"
                                         f"?token={TOKEN}", timeout=600)
        printed, shown = [], []
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            code = parameters if "parameters" in cell.metadata.get("tags", []) else cell.source
            outputs = execute(ws, session["id"], code)
            errors = [f"{o['ename']}: {o['evalue']}" for o in outputs if o["type"] == "error"]
            assert not errors, (code[:200], errors)
            printed += [o["text"] for o in outputs if o["type"] == "stream"]
            shown += [o["data"] for o in outputs if o["type"] in ("display_data", "execute_result")]
        ws.close()
        server.api("DELETE", f"/api/sessions/{session['id']}")
        assert server.api("GET", "/api/kernels") == []
    finally:
        server.stop()
    (out,) = (tmp_path / "figures").glob("fashion-mnist-smoke-budgets-*")  # changed budgets: a folder of their own
    assert (out / "fig_losses_2d_embeddings.png").stat().st_size > 10_000
    # what the cells print and draw reached the client: the run line, the figure, the accuracy table
    assert any("2-d embeddings on" in text for text in printed), printed
    assert any("image/png" in data for data in shown)
    assert any("test accuracy (%)" in data.get("text/html", "") for data in shown)

"""An SRE's first step in a real browser: JupyterLab against a sandbox, 00_preflight opened and run with its
defaults, the verdict table rendered and no error; the setup cell re-run without error."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.browser.conftest import screenshot, shot_on_failure
from tests.conftest import port_block, start_sandbox

pytestmark = pytest.mark.integration
PORT = port_block()
ROOT = Path(__file__).resolve().parents[2]
JUPYTER = str(Path(sys.executable).parent / "jupyter")
LAB_SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                                     "checkForUpdates": False},
                "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"}}
"""JupyterLab settings: no news nor update check (the network is closed; their dialog would cover the page), and
every cell rendered, not only those in view, so that the checks see every output."""
SERVER_CONFIG = {"ServerApp": {"allow_root": True},
                 "LabApp": {"news_url": None, "extension_manager": "readonly",
                           "check_for_updates_class": "jupyterlab.handlers.announcements.NeverCheckForUpdate"}}
"""Nothing fetched from outside (no news feed, no update check, no extension index); root allowed (CI runs as root)."""
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkout-like folder: the committed notebooks unchanged, and params/sandbox.yaml pointing at a sandbox
    started for this test (as `make demo` leaves it), so that the notebooks' defaults are right."""
    root = tmp_path_factory.mktemp("lab")
    sb = start_sandbox(root / ".sandbox", PORT, 500)
    shutil.copytree(ROOT / "notebooks", root / "notebooks")
    data = yaml.safe_load((sb.root / "params.yaml").read_text())
    data["cluster"]["password_file"] = str(sb.password_path)
    data["report"]["dir"] = str(root / "reports")
    data["bigkeys"] = {"max_ops_per_s": 0.0}
    (root / "params").mkdir()
    (root / "params" / "sandbox.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    yield root
    sb.down()


@pytest.fixture(scope="module")
def lab(workspace):
    """JupyterLab on a free loopback port with a known token, its settings, state and runtime in the workspace."""
    port, token = free_port(), secrets.token_hex(16)
    settings = workspace / ".jupyter" / "lab-settings"
    for name, value in LAB_SETTINGS.items():
        (settings / name).parent.mkdir(parents=True, exist_ok=True)
        (settings / name).write_text(json.dumps(value))
    config = workspace / ".jupyter" / "config"
    config.mkdir(parents=True, exist_ok=True)
    (config / "jupyter_server_config.json").write_text(json.dumps(SERVER_CONFIG))
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(workspace / ".jupyter" / "workspaces"),
           "JUPYTER_CONFIG_DIR": str(config),
           "JUPYTER_RUNTIME_DIR": str(workspace / ".jupyter" / "runtime"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    log = open(workspace / "jupyterlab.log", "wb")
    proc = subprocess.Popen([JUPYTER, "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={workspace}",
                             "--ServerApp.port_retries=0"],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.terminate()
                pytest.fail(f"JupyterLab did not start: {(workspace / 'jupyterlab.log').read_text()[-2000:]}")
            time.sleep(0.3)
    yield url, token
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def wait_until_idle(page, timeout_s: float = 240) -> None:
    """Until no cell is queued or running ([*]) and the kernel says idle."""
    page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=timeout_s * 1000)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        prompts = page.locator(".jp-Cell .jp-InputPrompt").all_inner_texts()
        status = page.locator(".jp-Notebook-ExecutionIndicator").get_attribute("data-status")
        if prompts and re.search(r"\[\d+\]", prompts[-1]) and not any("*" in p for p in prompts) and status == "idle":
            return
        time.sleep(0.5)
    raise AssertionError(f"cells still running after {timeout_s} s")


def accept_kernel(page, wait_s: float = 5.0) -> None:
    """Choose the notebook's own kernel when JupyterLab asks (it sometimes does on a first open)."""
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if dialog.count() and dialog.first.is_visible():
            dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
            dialog.first.wait_for(state="detached", timeout=10_000)
            return
        time.sleep(0.2)


def errors_shown(page) -> list[str]:
    """Error outputs on the page: tracebacks or exceptions in stderr-typed outputs."""
    texts = page.locator(STDERR).all_inner_texts()
    return [t[:300] for t in texts if "Traceback" in t or re.search(r"\b\w+(Error|Exception)\b", t)]


def test_preflight_runs_in_jupyterlab_and_its_setup_cell_reruns(page, lab, workspace, tmp_path):
    url, token = lab
    page.goto(f"{url}/lab/tree/notebooks/00_preflight.ipynb?token={token}")
    with shot_on_failure(page, tmp_path, "preflight-open"):
        page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
        accept_kernel(page)
        page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
    with shot_on_failure(page, tmp_path, "preflight-run-all"):
        page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
        page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
        wait_until_idle(page)
        verdict = page.locator(".jp-Cell").last.locator(".jp-OutputArea-output table")
        verdict.first.wait_for(timeout=10_000)
        header = verdict.first.locator("th").all_inner_texts()
        assert [h.strip() for h in header][:3] == ["name", "status", "detail"], header
        assert verdict.first.locator("td", has_text="pass").count() > 0, "the verdict lists passing checks"
        assert errors_shown(page) == []
        executed = page.locator(".jp-Cell.jp-CodeCell .jp-InputPrompt").all_inner_texts()
        assert executed and all(re.search(r"\[\d+\]", p) for p in executed), f"cells not run: {executed}"
    shot = screenshot(page, tmp_path, "preflight-run-all")

    with shot_on_failure(page, tmp_path, "preflight-setup-rerun"):
        setup = page.locator(".jp-Cell.jp-CodeCell", has_text="open_section(").first
        setup.locator(".jp-InputArea-editor").click()
        page.keyboard.press("Control+Enter")
        wait_until_idle(page)
        assert setup.locator(STDERR).count() == 0, setup.locator(STDERR).all_inner_texts()
        assert errors_shown(page) == []
        assert setup.locator(".jp-OutputArea-output table").count() == 1, "the provenance table is shown again"
    again = screenshot(page, tmp_path, "preflight-setup-rerun")
    assert shot.stat().st_size > 10_000 and again.stat().st_size > 10_000
    runs = [p for p in (workspace / "reports").glob("interactive-*") if (p / "results" / "00_preflight.json").exists()]
    assert len(runs) == 1 and json.loads((runs[0] / "results" / "00_preflight.json").read_text())["status"] != "fail"

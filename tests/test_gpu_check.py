"""The rehearsal of scripts/gpu_check.sh: every step of the GPU session, on the CPU at the smallest
sizes, so the script works the day a GPU is at hand (no timing is asserted here)."""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pandas as pd
import pytest
from conftest import needs_fashion

from reproduce.runner import REPO

KEYS = ["loader_speedup", "train_step_speedup", "pgd_speedup_vs_torchattacks", "restarts_speedup",
        "um_epoch_img_s", "at_epoch_img_s", "pgd20_eval_img_s"]


@pytest.mark.slow
@needs_fashion
def test_gpu_check_rehearses_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), str(out), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "failed steps: none" in (out / "log.txt").read_text()
    # 1. the device tests ran and passed
    suite = ET.parse(out / "device_tests.xml").getroot().find("testsuite")
    assert int(suite.get("tests")) >= 2 and suite.get("failures") == "0" and suite.get("errors") == "0"
    # 2. the benchmark wrote every key
    bench = json.loads((out / "bench.json").read_text())
    assert all(bench[key] > 0 for key in KEYS)
    assert bench["pgd_ours_acc"] <= bench["pgd_torchattacks_acc"] + 2.0
    # ... with torch.compile against eager (the rehearsal traces with aot_eager; the GPU run uses inductor)
    assert bench["compiled"] == "compiled (aot_eager)"
    assert all(bench[f"{k}_compile_speedup"] > 0 and bench[f"{k}_compile_seconds"] >= 0 for k in ("train", "pgd20"))
    # 3. the plan read it
    plan = (out / "plan.txt").read_text()
    assert "estimated device time" in plan and "5 models at once" in plan  # priced with the fill
    # 4. five models in one process and in two workers
    fill = json.loads((out / "fill.json").read_text())
    assert fill["models"] == 5 and fill["one_process_s"] >= 0 and fill["workers_s"] >= 0
    assert len(list((out / "fill-many").glob("*/result.json"))) == 5
    # 5. the four models' Table I
    table = pd.read_csv(out / "table1" / "table1_white_box.csv", index_col=0)
    assert list(table.index) == ["SM-UM", "SM-AT", "AAML-UM", "AAML-AT"] and table.shape == (4, 8)
    assert table.notna().all().all() and ((0 <= table) & (table <= 100)).all().all()
    # every step's time, images per second and device, from what each run recorded
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary) == ["device-tests", "bench", "fill", "plan", "table1", "audit"]
    assert summary["audit"]["n"] == 20 and isinstance(summary["audit"]["flagged"], bool)
    assert all(s["status"] == "passed" and s["seconds"] >= 0 for s in summary.values())
    assert summary["fill"]["workers"]["models"] == 5 and summary["fill"]["one_process"]["images_per_s_together"] > 0
    assert summary["table1"]["models"] == 4 and summary["table1"]["compiled"] == ["compiled (aot_eager)"]
    assert summary["table1"]["images_per_s_per_model"] > 0 and "threads" in summary["table1"]["device"][0]
    assert "| table1 |" in (out / "summary.md").read_text()

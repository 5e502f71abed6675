"""First install: scripts/install-torch.sh picks the CPU or CUDA build of torch, and the Makefile's stamps.

What it is: the script's choices run for real against a stub `python` that records its pip commands (no network,
nothing installed), its dry-run output, its GPU detection, and `make -n` of the `serve` and `test` targets.
What it is not: a test that pip can reach an index (CI's own `make test` from a fresh clone does that).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "install-torch.sh"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def stub_python(tmp_path: Path, *, index_works: bool) -> tuple[Path, Path]:
    """A `python` without torch whose `-m pip install` logs its arguments and fails for --index-url if asked."""
    log = tmp_path / "pip.log"
    stub = tmp_path / "python"
    fail_index = "exit 1" if not index_works else "exit 0"
    stub.write_text(
        "#!/usr/bin/env bash\n"
        'if [ "$1" = -c ]; then exit 1; fi\n'  # `import torch` fails: not installed
        f'echo "$*" >> "{log}"\n'
        f'case " $* " in *" --index-url "*) {fail_index} ;; esac\n'
        "exit 0\n"
    )
    stub.chmod(0o755)
    return stub, log


def run_script(python: Path, path_dirs: list[Path] | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MINIGPT_", "TORCH_"))}
    if path_dirs is not None:  # a PATH that holds only what the test puts there (plus the shell's basics)
        base["PATH"] = os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])
    return subprocess.run(
        ["bash", str(SCRIPT), str(python)], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_no_gpu_tries_the_cpu_index_fast_then_falls_back(tmp_path: Path) -> None:
    stub, log = stub_python(tmp_path, index_works=False)
    proc = run_script(stub, MINIGPT_GPU="no")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    assert len(calls) == 2, calls
    first, second = calls
    assert f"--index-url {CPU_INDEX}" in first and "torch==2.13.0" in first
    assert "--timeout 10" in first and "--retries 0" in first  # an unreachable index must not hang the install
    assert "--index-url" not in second and "torch==2.13.0" in second
    assert "trying the default index" in proc.stderr


def test_no_gpu_stops_after_the_cpu_index_when_it_works(tmp_path: Path) -> None:
    stub, log = stub_python(tmp_path, index_works=True)
    assert run_script(stub, MINIGPT_GPU="no").returncode == 0
    assert [f"--index-url {CPU_INDEX}" in c for c in log.read_text().splitlines()] == [True]


def test_gpu_uses_the_default_index(tmp_path: Path) -> None:
    stub, log = stub_python(tmp_path, index_works=False)
    assert run_script(stub, MINIGPT_GPU="yes").returncode == 0
    calls = log.read_text().splitlines()
    assert len(calls) == 1 and "--index-url" not in calls[0] and "torch==2.13.0" in calls[0]


def test_gpu_detection_by_nvidia_smi(tmp_path: Path) -> None:
    if Path("/proc/driver/nvidia").exists():
        pytest.skip("this machine has an NVIDIA driver: 'no GPU' cannot be simulated through PATH")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub, log = stub_python(tmp_path, index_works=True)
    assert run_script(stub, [bin_dir], MINIGPT_INSTALL_DRY_RUN="1").stdout.count("--index-url") == 1
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    out = run_script(stub, [bin_dir], MINIGPT_INSTALL_DRY_RUN="1").stdout
    assert "GPU found" in out and "--index-url" not in out
    assert not log.exists()  # dry runs run nothing


def test_dry_run_prints_both_commands(tmp_path: Path) -> None:
    stub, _ = stub_python(tmp_path, index_works=True)
    out = run_script(stub, MINIGPT_GPU="no", MINIGPT_INSTALL_DRY_RUN="1").stdout
    pip_lines = [line for line in out.splitlines() if " -m pip install " in line]
    assert len(pip_lines) == 2 and CPU_INDEX in pip_lines[0] and "--index-url" not in pip_lines[1], out
    assert run_script(stub, MINIGPT_GPU="maybe").returncode == 2


def test_installed_torch_is_left_alone(tmp_path: Path) -> None:
    stub = tmp_path / "python"
    stub.write_text('#!/usr/bin/env bash\nif [ "$1" = -c ]; then echo 2.13.0; exit 0; fi\nexit 1\n')
    stub.chmod(0o755)
    proc = run_script(stub, MINIGPT_GPU="yes")
    assert proc.returncode == 0 and "already installed" in proc.stdout


def test_pins_agree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    pinned = re.search(r"ARG TORCH_VERSION=(\S+)", dockerfile)
    assert pinned is not None
    assert f"TORCH_VERSION=${{TORCH_VERSION:-{pinned.group(1)}}}" in SCRIPT.read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_serve_installs_without_dev_extras_and_test_with_them() -> None:
    def plan(target: str) -> str:
        # -n prints the recipes without running them; -B as if nothing were installed yet
        proc = subprocess.run(["make", "-n", "-B", target], cwd=ROOT, capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    serve, test = plan("serve"), plan("test")
    assert "scripts/install-torch.sh .venv/bin/python" in serve
    assert "pip install -q -e ." in serve and "[dev]" not in serve
    assert "scripts/install-torch.sh .venv/bin/python" in test
    assert "pip install -q -e '.[dev]'" in test
    assert "torch==" not in serve + test  # only the script chooses where torch comes from

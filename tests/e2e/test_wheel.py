"""The wheel the container image installs: built from the files and with the command the
Dockerfile's first stage uses, installed into a fresh virtualenv as its second stage does,
then `bridge run --help` and `bridge demo` run from a directory outside the source tree."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype
import pytest

from bridge.cli import SETTING_FLAGS
from tests.e2e.proc import Proc

ROOT = Path(__file__).resolve().parents[2]
# Building fetches setuptools into pip's isolated build environment and installing fetches
# the pinned dependencies: minutes on a slow index, so the bound is generous on purpose.
PIP_TIMEOUT = 900
# The suite's 60 s per test counts the module fixture's build and install too (the first
# test pays for them, a compile of the DNS fast path included): each pip step has its bound.
pytestmark = pytest.mark.timeout(2 * PIP_TIMEOUT + 300)
DOCKERIGNORED = [line.strip().removeprefix("**/") for line in
                 (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and line[0] != "#"]


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return stages


def _pip(python: Path, command: str, cwd: Path, substitute: dict[str, str],
         env: dict[str, str] | None = None) -> None:
    """Runs a Dockerfile `RUN pip ...` step with `python -m pip`, paths substituted."""
    args = command.split()
    assert args[0] == "pip", f"expected a pip step, got {command!r}"
    args = [substitute.get(a, a) for a in args[1:]]
    done = subprocess.run([str(python), "-m", "pip", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=PIP_TIMEOUT, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"pip {args} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bridge` command of a fresh virtualenv holding only the built wheel and its
    dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    build_stage, final_stage = dockerfile_stages()
    src, wheels = tmp / "src", tmp / "wheels"
    src.mkdir()
    env: dict[str, str] = {}
    for instruction, args in build_stage:
        if instruction == "ENV":
            env.update(pair.split("=", 1) for pair in args.split())
        elif instruction == "RUN" and args.startswith("apt-get"):
            continue  # the stage's C compiler: here the machine's (`./dev test` installs it)
        elif instruction == "COPY":
            *sources, dest = args.split()
            for source in sources:
                target = src / dest / (source if dest.endswith("/") else "")
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, src / dest, symlinks=True,
                                    ignore=shutil.ignore_patterns(*DOCKERIGNORED))
                else:
                    shutil.copy2(ROOT / source, target)
        elif instruction == "RUN":
            _pip(Path(sys.executable), args, src, {"/wheels": str(wheels)}, env)
    built = sorted(wheels.glob("bridge-*.whl"))
    assert len(built) == 1, f"expected one bridge wheel, got {built}"
    with zipfile.ZipFile(built[0]) as whl:
        names = set(whl.namelist())
    for data in ("bridge/demo/kubernetes.yaml", "bridge/demo/consul.yaml"):
        assert data in names, f"{data} missing from the wheel"
    assert any(re.fullmatch(r"bridge/dns/_udpfast\..*\.so", name) for name in names), \
        f"the compiled DNS fast path is missing from the wheel: {sorted(names)}"

    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    installs = [args.split("&&")[0].strip() for instruction, args in final_stage
                if instruction == "RUN" and args.startswith("pip install")]
    assert len(installs) == 1, f"expected one `pip install` of the wheel: {final_stage}"
    _pip(python, installs[0], tmp, {"/wheels/*.whl": str(built[0])})
    return venv / "bin" / "bridge"


@pytest.fixture
def elsewhere(tmp_path) -> Path:
    """A working directory with no source tree in or above it."""
    assert ROOT not in tmp_path.parents
    return tmp_path


def test_the_installed_package_is_the_wheels_not_the_source_tree(installed, elsewhere):
    out = subprocess.run([str(installed.with_name("python")), "-c",
                          "import bridge; print(bridge.__file__)"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    assert "site-packages" in out and not out.startswith(str(ROOT)), out


def test_the_installed_wheel_answers_dns_with_the_compiled_path(installed, elsewhere):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BRIDGE_DNS_COMPILED")}
    done = subprocess.run([str(installed.with_name("python")), "-c",
                           "from bridge.dns import udp_batch; print(udp_batch.compiled())"],
                          cwd=elsewhere, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0 and "site-packages" in done.stdout, \
        f"the wheel's compiled DNS fast path does not load: {done.stdout}{done.stderr}"


def test_run_help_lists_every_setting_flag(installed, elsewhere):
    done = subprocess.run([str(installed), "run", "--help"], cwd=elsewhere, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for flag in ("--config", *SETTING_FLAGS):
        assert flag in done.stdout, f"{flag} missing from `bridge run --help`:\n{done.stdout}"


def test_demo_runs_from_the_wheel_and_stops_on_sigterm(installed, elsewhere):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = Proc("demo", "--dns-listen", "127.0.0.1:0", program=str(installed), cwd=elsewhere,
                env=env)
    try:
        port = int(proc.expect(r"dns listening on 127\.0\.0\.1:(\d+)").group(1))
        proc.expect(r"^ready$")
        query = dns.message.make_query("php-apache-svc.default.svc.cluster.local.",
                                       dns.rdatatype.A)
        answer = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
        addresses = {r.address for rrset in answer.answer for r in rrset}
        assert addresses == {"10.28.3.13", "10.28.5.15"}, answer.to_text()
    finally:
        code = proc.stop()
    assert code == 0, f"the demo exited {code} on SIGTERM"

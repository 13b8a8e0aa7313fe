"""The SDK works from the base install alone: no torch, no numpy, no server dependencies.

Two environments, each a separate interpreter that has never seen torch:

- always: a venv whose site-packages links exactly the distributions the base install pulls in
  (the closure of `deepseek`'s own Requires-Dist, extras excluded) plus this checkout's `src`.
  Offline and quick; it checks the same thing pip would install, without running pip.
- `slow`: a real venv built by `pip install --no-deps -e .` and `pip install openai==...`; skipped
  when pip cannot install (an offline machine without a local index).
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement

SRC = Path(__file__).resolve().parents[2] / "src"

PROBE = textwrap.dedent("""
    import importlib.util, sys
    assert importlib.util.find_spec("torch") is None, "torch is installed here"
    import deepseek
    assert "openai" not in sys.modules, "import deepseek loaded the SDK eagerly"
    from deepseek import CostTracker, DeepSeek
    client = DeepSeek()
    r = client.chat.completions.create(model="deepseek-chat", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=3, timeout=30)
    chunks = list(client.chat.completions.create(model="deepseek-reasoner", stream=True, max_tokens=3,
                                                 messages=[{"role": "user", "content": "hi"}]))
    assert client.user.balance().balance_infos
    CostTracker().record(r)
    from deepseek.cli import batch, chat, compare, usage   # the SDK's tools load too
    heavy = sorted(m for m in ("torch", "numpy", "safetensors", "tokenizers", "fastapi") if m in sys.modules)
    assert not heavy, heavy
    print("BASE-OK", r.usage.prompt_cache_miss_tokens, len(chunks))
""")


def base_closure() -> list[md.Distribution]:
    """The installed distributions `pip install deepseek` (no extras) would bring in."""
    seen, todo, out = set(), ["deepseek"], []
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        dist = md.distribution(name)
        out.append(dist)
        for spec in dist.requires or ():
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def linked_venv(root: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                        text=True).strip())
    for dist in base_closure():
        if dist.metadata["Name"].lower() == "deepseek":
            continue                                     # this checkout goes in through a .pth file
        tops = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        for top in tops - {"__pycache__"}:
            target = Path(dist.locate_file(top))
            if target.exists() and not (site / top).exists():
                (site / top).symlink_to(target)
    (site / "deepseek-src.pth").write_text(str(SRC) + "\n")
    return python


def run_probe(python: Path, server) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(DEEPSEEK_API_KEY=server.key, DEEPSEEK_BASE_URL=server.url)
    result = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, env=env, timeout=120,
                            cwd="/")
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_deepseek_loads_neither_torch_nor_openai():
    code = ("import sys, deepseek; assert 'torch' not in sys.modules and 'openai' not in sys.modules;"
            "from deepseek import DeepSeek, AsyncDeepSeek, CostTracker, InsufficientBalanceError;"
            "assert 'torch' not in sys.modules; print(sorted(n for n in dir(deepseek) if n[0] != '_'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "DeepSeek" in out and "AsyncDeepSeek" in out


def test_a_venv_with_only_the_base_install_calls_the_server(sdk_server, tmp_path):
    names = {d.metadata["Name"].lower() for d in base_closure()}
    assert "openai" in names and not names & {"torch", "numpy", "fastapi"}
    python = linked_venv(tmp_path / "venv")
    assert "BASE-OK" in run_probe(python, sdk_server)


@pytest.mark.slow
def test_a_real_pip_installed_base_venv_calls_the_server(sdk_server, tmp_path):
    root = tmp_path / "pipvenv"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    openai_pin = f"openai=={md.version('openai')}"
    for args in (["--no-deps", "-e", str(SRC.parent)], [openai_pin]):
        result = subprocess.run(pip + args, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            pytest.skip(f"pip could not install {args[-1]} here: {result.stderr.strip()[-300:]}")
    assert "BASE-OK" in run_probe(root / "bin" / "python", sdk_server)

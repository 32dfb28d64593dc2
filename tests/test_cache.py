"""The derivation's disk cache: a second run reads what the first derived and checked, a
changed source misses, a broken file is derived again, and the cache can be turned off."""
from __future__ import annotations

import os
import subprocess
import sys

from derive import cache
from derive.catalog import Result, _derive


def _show(env):
    return subprocess.run([sys.executable, "-m", "derive", "show", "dyisru"],
                          capture_output=True, text=True, env={**os.environ, **env})


def test_the_second_run_reads_the_first(tmp_path):
    first, second = _show({"DYNORM_CACHE": str(tmp_path)}), _show({"DYNORM_CACHE": str(tmp_path)})
    assert first.returncode == second.returncode == 0 and first.stdout == second.stdout
    assert "deriving and checking dyisru" in first.stderr and second.stderr == ""
    assert (tmp_path / cache.key() / "dyisru.pickle").is_file()


def test_off_stores_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNORM_CACHE", "off")
    cache.store("dyt", 1)
    assert cache.folder() is None and cache.load("dyt") is None and not list(tmp_path.iterdir())


def test_another_key_or_a_broken_file_is_a_miss(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNORM_CACHE", str(tmp_path))
    r = _derive("dyt")
    cache.store("dyt", r)
    got = cache.load("dyt")
    assert isinstance(got, Result) and got.expr == r.expr and got.steps == r.steps
    monkeypatch.setattr(cache, "key", lambda: "another-source")
    assert cache.load("dyt") is None
    (tmp_path / "another-source").mkdir()
    (tmp_path / "another-source" / "dyt.pickle").write_bytes(b"not a pickle")
    assert cache.load("dyt") is None

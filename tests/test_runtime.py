"""Importing tunewise changes nothing process-wide; `tune_process()` (training and serving call it) does."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import textwrap

import pytest

# Every tunewise module imported in a fresh interpreter, with the third-party libraries they use imported first,
# so that what those do on import (their own business) is not counted as tunewise's.
IMPORT_ALL = """
import importlib, json, os, pkgutil, sys
import torch, transformers, peft  # noqa: F401
before = dict(os.environ)
import tunewise
for info in pkgutil.walk_packages(tunewise.__path__, "tunewise."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
after = dict(os.environ)
print(json.dumps({"before": before, "after": after, "modules": len(sys.modules)}))
"""

# Counts glibc's heaps (arenas) before and after a new thread allocates: a thread gets a heap of its own unless
# M_ARENA_MAX is 1. malloc_info writes one <heap nr=...> element per heap.
COUNT_HEAPS = """
import ctypes, importlib, os, pkgutil, sys, tempfile, threading
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.malloc.restype = ctypes.c_void_p

def heaps():
    path = tempfile.mktemp()
    f = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, f)
    libc.fclose(f)
    text = open(path).read()
    os.unlink(path)
    return text.count("<heap nr=")

import tunewise
for info in pkgutil.walk_packages(tunewise.__path__, "tunewise."):
    if not info.name.endswith("__main__"):
        importlib.import_module(info.name)
if sys.argv[1] == "tune":
    from tunewise.runtime import tune_process
    tune_process()
start = heaps()
kept = []
thread = threading.Thread(target=lambda: kept.append(libc.malloc(4096)))
thread.start(); thread.join()
print(heaps() - start)
"""


def _python(code: str, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", *_CACHES)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


_CACHES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")


def test_importing_every_tunewise_module_leaves_the_environment_unchanged():
    seen = json.loads(_python(IMPORT_ALL))
    assert seen["modules"] > 100  # the modules were really imported
    changed = {
        k for k in set(seen["before"]) | set(seen["after"]) if seen["before"].get(k) != seen["after"].get(k)
    }
    assert changed == set()


def _glibc() -> bool:
    try:
        ctypes.CDLL(None).mallopt  # noqa: B018
        ctypes.CDLL(None).malloc_info  # noqa: B018
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="heaps per thread are glibc's")
def test_importing_tunewise_leaves_the_heaps_per_thread_and_tuning_shares_one():
    assert _python(COUNT_HEAPS, "import") == "1"  # the new thread got a heap of its own: mallopt not called
    assert _python(COUNT_HEAPS, "tune") == "0"  # after tune_process, it allocates from the shared heap


def test_tune_process_sets_the_kernel_caches_but_a_value_already_set_wins(monkeypatch):
    from tunewise import runtime

    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.setattr(runtime, "one_heap_for_all_threads", lambda: False)  # the test process's heap stays
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    monkeypatch.setenv("LRU_CACHE_CAPACITY", "7")
    runtime.tune_process()
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "32"
    assert os.environ["LRU_CACHE_CAPACITY"] == "7"
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    runtime.tune_process()  # once per process
    assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ

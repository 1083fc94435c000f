"""The machine a study's cells ran on, as recorded with each cell and run: CPU, versions, GPUs and the
kernels its linear algebra runs (BLAS, torch's CPU capability, torch's LAPACK and MKL's code path),
which set the last bits of float64 results; and the one-line summary that tells machines apart.
"""

from __future__ import annotations

import ctypes
import math
import os
import platform
import re
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def machine_info() -> dict:
    """Platform, CPU model, cores, RAM, GPUs, the versions of python, numpy and torch, and the kernels
    the linear algebra runs: the BLAS libraries loaded (numpy's, scipy's) with the CPU kernels they
    picked, torch's CPU capability and torch's own LAPACK (:func:`_torch_lapack`).
    The kernels set the last bits of float64 results (e.g. OpenBLAS's SkylakeX kernels on a CPU with
    AVX-512, Haswell ones without), so two machines of one CPU name can round a study differently."""
    import numpy

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch, torch_version = None, "not installed"
    try:
        torch_cpu = torch.backends.cpu.get_cpu_capability() if torch is not None else "?"
    except (AttributeError, RuntimeError):  # an older torch
        torch_cpu = "?"
    return {
        "platform": platform.platform(), "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_gib": _ram_gib(),
        "python": platform.python_version(), "numpy": numpy.__version__, "torch": torch_version, "gpu": _gpu_names(),
        "blas": _blas(), "torch_cpu": torch_cpu, "torch_lapack": _torch_lapack(torch),
    }


def _torch_lapack(torch) -> str:
    """The LAPACK torch was built with (its LAPACK_INFO: "mkl", "open", …), with MKL's version and code
    path where it is MKL, e.g. "mkl 2024.2 (AVX2 code path)" — torch's eigh runs it, not numpy's BLAS,
    and MKL picks its code path by CPU: the quickstart's `torch` rows differ between an AMD EPYC and an
    Intel Xeon whose other kernels read the same."""
    try:
        text = torch.__config__.show() if torch is not None else ""
    except Exception:  # noqa: BLE001 — provenance is best effort
        return "unknown"
    found = re.search(r"LAPACK_INFO=([^,\s]+)", text)
    version = re.search(r"Math Kernel Library Version (\d[\d.]*)", text)
    name = found.group(1) if found else "unknown"
    if name != "mkl" or not version:
        return name
    path = _mkl_code_path(torch)
    return f"mkl {version.group(1)}" + (f" ({path} code path)" if path else "")


class _MKLVersion(ctypes.Structure):
    """oneMKL's ``MKLVersion`` (mkl_types.h): its ``Processor`` names the code path MKL dispatched to."""
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("update", ctypes.c_int),
                ("product_status", ctypes.c_char_p), ("build", ctypes.c_char_p),
                ("processor", ctypes.c_char_p), ("platform", ctypes.c_char_p)]


def _mkl_code_path(torch) -> str:
    """The instruction sets of the code path torch's MKL chose on this CPU, e.g. "AVX2", "AVX-512+AMX"
    (MKL picks it by CPU vendor and features, or by ``MKL_ENABLE_INSTRUCTIONS``); "" where it cannot
    be read. torch links MKL into ``libtorch_cpu``, which exports ``mkl_serv_get_version``, the
    function behind MKL's ``MKL_Get_Version``."""
    try:
        lib_dir = os.path.join(os.path.dirname(torch.__file__), "lib")
        names = [n for n in os.listdir(lib_dir) if re.fullmatch(r"(lib)?torch_cpu\.(so|dylib|dll)", n)]
        get_version = ctypes.CDLL(os.path.join(lib_dir, names[0])).mkl_serv_get_version
        info = _MKLVersion()
        get_version(ctypes.byref(info))
        processor = (info.processor or b"").decode(errors="replace")
    except (OSError, AttributeError, IndexError, ValueError):  # no such library or symbol: not recorded
        return ""
    return "+".join(re.findall(r"\(Intel\(R\) ([^)]+)\)", processor)) or processor.strip()


def torch_kernels(m: dict) -> str:
    """torch's CPU capability, and its LAPACK where recorded (cells and runs written before it have none)."""
    return m.get("torch_cpu", "?") + (f", LAPACK {m['torch_lapack']}" if "torch_lapack" in m else "")


def machine_summary(machine: dict) -> str:
    """What of a machine sets a cell's numbers, in one line: CPU, library versions, linear algebra
    kernels, GPU (stored with every cell, so that cells resumed on other machines stay told apart)."""
    m = machine if isinstance(machine, dict) else {}
    return (f"{m.get('cpu', '?')}; numpy {m.get('numpy', '?')}, torch {m.get('torch', '?')}; BLAS {m.get('blas', '?')}; "
            f"torch CPU {torch_kernels(m)}; GPU {m.get('gpu', '?')}")


def _blas() -> str:
    """The BLAS libraries loaded in this process — numpy's, and scipy's or others' where imported — with
    version and CPU kernels, e.g. "openblas 0.3.31 (SkylakeX kernels)" (numpy is imported by then:
    :func:`machine_info`); sorted, so that two runs on one machine write the same header whatever
    order the libraries were loaded in."""
    try:
        from threadpoolctl import threadpool_info

        found = [" ".join(str(x) for x in (i.get("internal_api"), i.get("version")) if x)
                 + (f" ({i['architecture']} kernels)" if i.get("architecture") else "")
                 for i in threadpool_info() if i.get("user_api") == "blas"]
    except Exception:  # noqa: BLE001 — provenance is best effort
        return "unknown"
    return ", ".join(sorted(set(found))) or "unknown"


def _gpu_names() -> str:
    """The CUDA devices torch sees, e.g. "1× NVIDIA H100 80GB HBM3", or "none"."""
    try:
        import torch

        if not torch.cuda.is_available():
            return "none"
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except (ImportError, RuntimeError):
        return "none"
    return ", ".join(f"{names.count(n)}× {n}" for n in dict.fromkeys(names))

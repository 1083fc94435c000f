"""The machine recorded with a study's cells (stabkit.studies._machine): versions, the BLAS and LAPACK
kernels and MKL's code path, read here independently (threadpoolctl, torch's build configuration,
MKL's own verbose output) — and how the report header and the cells' machine summary show them."""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path

from stabkit.studies import _machine, provenance

REPO = Path(__file__).resolve().parents[1]


def test_machine_info_names_the_cores_and_versions():
    info = provenance.machine_info()
    assert info["cores"] == os.cpu_count() and info["python"] and info["numpy"]
    assert set(info) == {"platform", "cpu", "cores", "ram_gib", "python", "numpy", "torch", "gpu", "blas", "torch_cpu",
                         "torch_lapack"}
    # the BLAS numpy loaded, as threadpoolctl reports it (an independent reading, here in the test)
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas"]
    for lib in blas:
        assert f"{lib['internal_api']} {lib['version']}" in info["blas"]
        if lib.get("architecture"):
            assert f"({lib['architecture']} kernels)" in info["blas"]
    assert provenance.header("x", {"kind": "k", "machine": info}).count(f"| BLAS {info['blas']};") == 1


def test_torch_s_own_lapack_is_named_in_the_header_and_older_records_read_as_before():
    """torch's eigh runs the LAPACK torch was built with (MKL in the x86 wheels), not numpy's BLAS: the
    quickstart's torch rows differed between two CPUs whose BLAS and torch capability read the same, so
    the header names it too. Read here independently from torch's build configuration."""
    import torch

    info = provenance.machine_info()
    config = torch.__config__.show()
    lapack = config.split("LAPACK_INFO=")[1].split(",")[0].strip()
    assert info["torch_lapack"].split()[0] == lapack
    if lapack == "mkl":
        version = config.split("Math Kernel Library Version ")[1].split("-")[0].split()[0]
        assert info["torch_lapack"].startswith(f"mkl {version} (") and info["torch_lapack"].endswith(" code path)")
    header = provenance.header("x", {"kind": "k", "machine": info})
    assert f"; torch CPU {info['torch_cpu']}, LAPACK {info['torch_lapack']} |" in header
    assert f"torch CPU {info['torch_cpu']}, LAPACK {info['torch_lapack']}; GPU" in provenance.machine_summary(info)
    older = {k: v for k, v in info.items() if k != "torch_lapack"}  # a cell or run.json written before it
    assert f"; torch CPU {info['torch_cpu']} |" in provenance.header("x", {"kind": "k", "machine": older})
    assert f"torch CPU {info['torch_cpu']}; GPU" in provenance.machine_summary(older)


_MKL_PATH = """
import sys, torch
from stabkit.studies import provenance
torch.linalg.eigh(torch.eye(8, dtype=torch.float64))  # one LAPACK call, so that MKL_VERBOSE prints its header
print("PATH=" + provenance.machine_info()["torch_lapack"], flush=True)
"""


def _mkl_code_path_and_verbose_header(**env):
    out = subprocess.run([sys.executable, "-c", _MKL_PATH], env={**os.environ, "MKL_VERBOSE": "1", **env},
                         capture_output=True, text=True, check=True, cwd=REPO).stdout
    lapack = out.split("PATH=")[1].strip()
    header = next(line for line in out.splitlines() if line.startswith("MKL_VERBOSE") and "architecture" in line)
    return lapack.split(" (")[1].removesuffix(" code path)"), header


def test_mkl_s_code_path_is_the_one_mkl_verbose_names_and_follows_mkl_enable_instructions():
    """MKL picks its kernels by CPU (the likely reason torch's eigh rounds differently on an AMD EPYC and an
    Intel Xeon), so the header names the path it took; read independently from MKL's own verbose header,
    and moved by MKL_ENABLE_INSTRUCTIONS (SSE4.2: a path every x86-64 CPU that runs MKL has)."""
    import torch

    if "LAPACK_INFO=mkl" not in torch.__config__.show():  # e.g. an ARM wheel: there is no MKL path to name
        assert "code path" not in _machine.machine_info()["torch_lapack"]
        return
    path, header = _mkl_code_path_and_verbose_header()
    assert path and all(f"(Intel(R) {part})" in header for part in path.split("+")), (path, header)
    path, header = _mkl_code_path_and_verbose_header(MKL_ENABLE_INSTRUCTIONS="SSE4_2")
    assert path == "SSE4.2" and "(Intel(R) SSE4.2)" in header


def test_an_mkl_whose_version_cannot_be_read_is_named_without_a_code_path(tmp_path):
    """A torch built with MKL whose library folder holds no readable libtorch_cpu (or one without
    mkl_serv_get_version): the record keeps MKL's version and names no path, rather than failing the run."""
    (tmp_path / "torch" / "lib").mkdir(parents=True)
    config = "LAPACK_INFO=mkl, … Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605"
    fake = types.SimpleNamespace(__file__=str(tmp_path / "torch" / "__init__.py"),
                                 __config__=types.SimpleNamespace(show=lambda: config))
    assert _machine._mkl_code_path(fake) == ""
    assert _machine._torch_lapack(fake) == "mkl 2024.2"
    (tmp_path / "torch" / "lib" / "libtorch_cpu.so").write_bytes(b"not a library")
    assert _machine._torch_lapack(fake) == "mkl 2024.2"


def test_the_blas_libraries_are_named_in_one_order_whatever_order_they_were_loaded_in(monkeypatch):
    import threadpoolctl

    libs = [{"user_api": "blas", "internal_api": "openblas", "version": "0.3.27", "architecture": "Haswell"},
            {"user_api": "openmp", "internal_api": "openmp", "version": None},
            {"user_api": "blas", "internal_api": "mkl", "version": "2024.1"}]
    seen = []
    for order in (libs, libs[::-1]):
        monkeypatch.setattr(threadpoolctl, "threadpool_info", lambda order=order: order)
        seen.append(_machine._blas())
    assert seen == ["mkl 2024.1, openblas 0.3.27 (Haswell kernels)"] * 2

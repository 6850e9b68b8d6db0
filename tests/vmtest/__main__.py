"""``python -m tests.vmtest`` (``make vmtest``): the kernel matrix. See tests/vmtest/__init__.py.

Exit 0: every kernel passed; 1: a kernel failed (or, under KPROBE_CI=1, the matrix could not
run); 2: bad arguments; 3: QEMU cannot run here at all (without KPROBE_CI=1).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import IO

from tests.vmtest import initramfs, kernels, qemu
from tests.vmtest.errors import NoQemuError, VmtestError
from tests.vmtest.guest import TESTS
from tests.vmtest.results import KernelOutcome, decode_all, judge, kernel_line, summary_line

REPO = Path(__file__).resolve().parents[2]
GUEST_INIT = REPO / "tests" / "vmtest" / "guest_init.sh"
EXIT_NO_QEMU = 3
KVM_PROBE_S = 15.0  # a guest under KVM reaches its init in ~1 s; TCG needs ~4 s


def _say(text: str) -> None:
    print(text, flush=True)


def _loud(text: str) -> None:
    bar = "!" * 78
    _say(f"{bar}\nvmtest: {text}\n{bar}")


def probe_kvm(qemu_bin: str, kernel: kernels.UnpackedKernel, work: Path) -> tuple[bool, str]:
    """Does this kernel really boot to its init under KVM here? (ok, why)"""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "no usable /dev/kvm"
    probe = initramfs.build_probe(work / "probe.cpio")
    spec = qemu.VmSpec(accel="kvm", cpus=1, memory_mib=256)
    command = qemu.qemu_command(qemu_bin, spec, kernel.vmlinuz, probe, Path("/dev/null"))
    with open(work / "kvm-probe.log", "w") as log:
        run = qemu.run_vm(command, log, KVM_PROBE_S, stop_on=initramfs.PROBE_MARK)
    if run.marker_seen:
        return True, f"a guest reached its init under KVM in {run.seconds:.1f} s"
    why = f"a guest did not reach its init under KVM in {KVM_PROBE_S:.0f} s"
    errors = [line for line in run.last_lines if "KVM" in line or "error" in line.lower()]
    if errors:
        why += f" ({errors[0].strip()})"
    if Path("/sys/module/kvm_pvm").exists():
        why += ("; this host's KVM is kvm-pvm (paravirtual, nested): it runs only guest "
                "kernels built for PVM")
    return False, why


def _scratch_disk(path: Path) -> Path:
    """A fresh, sparse ext4 image: the guest's /tmp (the block tests need a real disk)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as fh:
        fh.truncate(4 << 30)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-E", "nodiscard", str(path)], check=True,
                   capture_output=True)
    return path


# not part of the snapshot: at the top of the tree, and (anywhere) bytecode caches
_SNAPSHOT_SKIP_TOP = {".git", ".venv", "build", ".mypy_cache", ".ruff_cache", ".pytest_cache",
                      "kprobe.egg-info", "lake-data", "kprobe-demo-lake", "kprobe-demo-s3"}


def snapshot_tree(repo: Path, dest: Path) -> Path:
    """A copy of the working tree as it is now, built BPF objects included (not .git, the
    virtualenv or build output). The guests and the native run test this copy: engineers
    who edit or rebuild the tree during a run would otherwise hand a guest files cut at
    their old size (SyntaxError) or replaced under it (ESTALE through its overlay)."""
    def skip(directory: str, names: list[str]) -> set[str]:
        top = _SNAPSHOT_SKIP_TOP if Path(directory) == repo else set()
        return {n for n in names if n in top or n == "__pycache__"}

    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(repo, dest, ignore=skip, symlinks=True)
    return dest


def build_programs(tree: Path, out: Path) -> Path:
    """tests/programs built once on the host (compiling in an emulated guest takes minutes);
    the tests' fixture builds into the same directory, where make finds them up to date."""
    proc = subprocess.run(["make", "-s", "-C", str(tree / "tests" / "programs"), f"OUT={out}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise VmtestError(f"make -C tests/programs failed: {proc.stderr.strip()[-300:]}")
    return out


def run_guest(qemu_bin: str, kernel: kernels.UnpackedKernel, spec: qemu.VmSpec,
              cache: Path, tree: Path, logs: Path, tests: Sequence[str], deadline_s: float
              ) -> KernelOutcome:
    """Boot ``kernel`` in a VM, run the checks in it, judge its results."""
    work = cache / "run" / kernel.release
    work.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{kernel.release}.log"
    results = logs / f"{kernel.release}.results"
    results.unlink(missing_ok=True)
    command = ["/bin/sh", str(tree / GUEST_INIT.relative_to(REPO)), str(tree), sys.executable,
               str(kernel.modules),
               "--results", "/dev/ttyS1", "--work", "/tmp/kprobe-vmtest",
               "--programs", str(cache / "programs"), "--tests", *tests]
    start = time.monotonic()
    with open(log_path, "w") as log:
        try:
            initrd = initramfs.build(kernel, command, work / "initramfs.cpio")
            scratch = _scratch_disk(work / "scratch.img")
            socket = work / "root.sock"
            with qemu.RootShare(socket, cache / "ro-root", log):
                vm = qemu.run_vm(qemu.qemu_command(qemu_bin, spec, kernel.vmlinuz, initrd,
                                                   results, socket, scratch), log, deadline_s)
        except (VmtestError, OSError, subprocess.CalledProcessError) as err:
            log.write(f"vmtest: {err}\n")
            return judge(kernel.release, spec.accel, time.monotonic() - start, [],
                         stopped=f"could not start: {err}", log=str(log_path))
        finally:
            (work / "scratch.img").unlink(missing_ok=True)
    if vm.lockup:
        stopped = f"the guest kernel hung, stopped after {vm.seconds:.0f} s: {vm.lockup}"
    elif vm.exit_code is None:
        stopped = f"killed at the {deadline_s:.0f} s deadline; last: {vm.last_lines[-1:]}"
    elif vm.crash:
        stopped = f"the guest kernel crashed (qemu exit {vm.exit_code}): {vm.crash}"
    else:
        stopped = (f"the guest stopped, qemu exit {vm.exit_code}; its console's last lines: "
                   f"{' | '.join(vm.last_lines[-3:]) or '(none)'}")
    found = decode_all(results.read_text(errors="replace")) if results.exists() else []
    outcome = judge(kernel.release, spec.accel, vm.seconds, found, stopped=stopped,
                    log=str(log_path))
    if vm.crash and outcome.ok:  # after every check passed: said, not failed
        return replace(outcome, note=f"the kernel crashed after its checks: {vm.crash}")
    if vm.crash and all(r.ok for r in found):
        return replace(outcome, crashed=vm.crash)
    return outcome


def run_guest_retrying_a_crash(qemu_bin: str, kernel: kernels.UnpackedKernel,
                               spec: qemu.VmSpec, cache: Path, tree: Path, logs: Path,
                               tests: Sequence[str], deadline_s: float) -> KernelOutcome:
    """``run_guest``, and once more when the guest kernel crashed before any step failed:
    under software emulation the Debian 6.12 kernel has died in its int3 handler while
    tracepoints were being switched on (a fault of the emulated kernel, not of a check).
    The crash stays on the kernel's line, and its log is kept beside the new one."""
    first = run_guest(qemu_bin, kernel, spec, cache, tree, logs, tests, deadline_s)
    if not first.crashed:
        return first
    kept = logs / f"{kernel.release}.crashed.log"
    Path(first.log).replace(kept)
    _say(f"vmtest: {kernel.release}: the guest kernel crashed ({first.crashed}); "
         f"booting it once more (log kept: {kept})")
    second = run_guest(qemu_bin, kernel, spec, cache, tree, logs, tests, deadline_s)
    return replace(second, note=f"the first boot's kernel crashed: {first.crashed}")


def run_native(cache: Path, tree: Path, logs: Path, tests: Sequence[str], deadline_s: float
               ) -> KernelOutcome:
    """The same checks on the host's running kernel (its image is not on disk here)."""
    release = os.uname().release
    log_path, results = logs / f"{release}.log", logs / f"{release}.results"
    results.unlink(missing_ok=True)
    start = time.monotonic()
    work = tempfile.mkdtemp(prefix="kprobe-vmtest-")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "tests.vmtest.guest", "--results",
                                 str(results), "--work", work,
                                 "--programs", str(cache / "programs"), "--tests", *tests],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=tree, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1",
                                               "PYTHONPATH": str(tree)})
        try:
            code: int | None = proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
    shutil.rmtree(work, ignore_errors=True)
    stopped = f"exit {code}" if code is not None else f"killed at {deadline_s:.0f} s"
    found = decode_all(results.read_text(errors="replace")) if results.exists() else []
    return judge(release, "native", time.monotonic() - start, found, stopped=stopped,
                 log=str(log_path))


def hold_matrix_lock(cache: Path) -> IO[str]:
    """One matrix at a time on this machine (guests share the cache, and two would
    starve each other of the two cores): wait for another run to finish."""
    cache.mkdir(parents=True, exist_ok=True)
    lock = open(cache / "matrix.lock", "a+")  # noqa: SIM115 (held until the process ends)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        _say(f"vmtest: another matrix run ({lock.read().strip() or 'pid unknown'}) holds "
             f"{lock.name}; waiting for it to finish")
        fcntl.flock(lock, fcntl.LOCK_EX)
    lock.truncate(0)
    lock.write(f"pid {os.getpid()}, {REPO}\n")
    lock.flush()
    return lock


def _check_visible_in_guests(python: Path, cache: Path) -> None:
    """The guests see this machine's root but mount their own /tmp: an interpreter or a
    cache under /tmp would be missing in them (they would fail to start, unexplained)."""
    for what, path in (("the virtualenv's python", python.parent), ("--cache", cache)):
        resolved = path.resolve()
        if resolved == Path("/tmp") or Path("/tmp") in resolved.parents:
            raise VmtestError(f"{what} is under /tmp ({path}), which the guests replace "
                              "with their own: use a clone (and cache) elsewhere, e.g. "
                              "under /var/tmp or /srv")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vmtest",
                                     description="boot each supported kernel and run the "
                                     "capture checks in it (root)")
    parser.add_argument("--lines", nargs="+", default=list(kernels.LINES),
                        help="Debian kernel lines to boot (default: %(default)s)")
    parser.add_argument("--no-native", action="store_true",
                        help="skip the checks on the host's own kernel")
    parser.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    parser.add_argument("--cpus", type=int, default=2, help="vCPUs per guest")
    parser.add_argument("--memory", type=int, default=2048, help="MiB per guest")
    parser.add_argument("--parallel", type=int, default=2, help="guests at once")
    # a guest takes ~6 min here, ~12 with the machine busy with other tests; past this it hangs
    parser.add_argument("--deadline", type=float, default=1500.0,
                        help="seconds a guest may take before it is killed")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "KPROBE_VMTEST_CACHE", "/var/cache/kprobe/vmtest")))
    parser.add_argument("--logs", type=Path, default=REPO / "build" / "vmtest")
    parser.add_argument("--tests", nargs="+", default=list(TESTS), help="pytest node ids")
    args = parser.parse_args(argv)
    in_ci = os.environ.get("KPROBE_CI") == "1"
    start = time.monotonic()
    try:
        if os.geteuid() != 0:
            raise NoQemuError("not root: the guests' root share and the checks need root")
        _check_visible_in_guests(Path(sys.executable), args.cache)
        lock = hold_matrix_lock(args.cache)
        qemu_bin = qemu.find_qemu()
        qemu.find_virtiofsd()
        initramfs.find_static_busybox()
        args.logs.mkdir(parents=True, exist_ok=True)
        packages = kernels.select_packages(args.lines)
        unpacked = [kernels.ensure_unpacked(p, args.cache) for p in packages.values()]
        tree = snapshot_tree(REPO, args.cache / "tree")
        build_programs(tree, args.cache / "programs")
    except NoQemuError as err:
        _loud(f"THE KERNEL MATRIX CANNOT RUN HERE, NO KERNEL WAS BOOTED: {err}")
        return 1 if in_ci else EXIT_NO_QEMU
    except VmtestError as err:
        _loud(f"the matrix cannot run: {err}")
        return 1
    _say(f"vmtest: testing a snapshot of {REPO} in {tree}")
    _say("vmtest: kernels " + ", ".join(f"{k.release} ({k.package.name})" for k in unpacked)
         + ("" if args.no_native else f", and the host's {os.uname().release} natively"))

    tsc_khz = qemu.host_tsc_khz()
    _say(f"vmtest: emulated guests keep time by their TSC at this host's {tsc_khz / 1000:.3f} MHz"
         if tsc_khz else "vmtest: this host's TSC frequency is not in its kernel log: emulated "
         "guests keep time by the HPET (their vDSO clock reads become system calls)")
    accel: dict[str, qemu.Accel] = {}
    with ThreadPoolExecutor(max_workers=len(unpacked)) as pool:
        probes = {k.release: pool.submit(probe_kvm, qemu_bin, k, _work(args.cache, k))
                  for k in unpacked} if args.accel == "auto" else {}
        for k in unpacked:
            if args.accel != "auto":
                accel[k.release] = args.accel
                _say(f"vmtest: {k.release}: {args.accel} (asked for)")
                continue
            works, why = probes[k.release].result()
            accel[k.release] = "kvm" if works else "tcg"
            _say(f"vmtest: {k.release}: {'kvm' if works else 'tcg (software emulation)'}: "
                 f"{why}")

    outcomes: list[KernelOutcome] = []
    if not args.no_native:
        outcome = run_native(args.cache, tree, args.logs, args.tests, args.deadline)
        _say(kernel_line(outcome))
        outcomes.append(outcome)

    def one(kernel: kernels.UnpackedKernel) -> KernelOutcome:
        spec = qemu.VmSpec(accel=accel[kernel.release], cpus=args.cpus,
                           memory_mib=args.memory, tsc_khz=tsc_khz)
        outcome = run_guest_retrying_a_crash(qemu_bin, kernel, spec, args.cache, tree,
                                             args.logs, args.tests, args.deadline)
        _say(kernel_line(outcome))
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        outcomes += list(pool.map(one, unpacked))

    for o in outcomes:
        if not o.ok:
            _say(f"vmtest: {o.release}: every failure ({len(o.failures)}), full log {o.log}")
            for failure in o.failures:
                _say(f"vmtest:   {failure}")
    _say(f"vmtest: matrix took {time.monotonic() - start:.0f} s")
    _say(summary_line(outcomes))
    lock.close()
    return 0 if all(o.ok for o in outcomes) else 1


def _work(cache: Path, kernel: kernels.UnpackedKernel) -> Path:
    work = cache / "run" / kernel.release
    work.mkdir(parents=True, exist_ok=True)
    return work


if __name__ == "__main__":
    sys.exit(main())

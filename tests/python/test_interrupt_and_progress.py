"""Ctrl-C during a load: the CLI and the Python module stop it, return what it
reserved, and say so; hoist.load's progress callback, which may stop a load
the same way.

Each load here runs in a process of its own, reading a llama-3.2-1b layout
cut to 2 layers (about 0.77 GB) onto the cpu with one reader thread. The
signal is sent once the command has 64 MiB resident (the Python test: 64
MiB more than before its load), that is once the load is filling its arena,
with most of it still to read. That the load stopped there, rather than running to its end before
the signal was acted on, is read from the bytes the process read
(/proc/PID/io's rchar, which counts preads): a finished load reads the whole
checkpoint. (Peak resident memory would not do: a child's counts its
parent's, from before exec.)

Run: PYTHONPATH=build/python HOIST_BIN=build/hoist python3 -m pytest -q tests/python/test_interrupt_and_progress.py
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hoist_testlib import ok

TRIGGER_BYTES = 64 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory, run_hoist) -> tuple[Path, int]:
    out = tmp_path_factory.mktemp("interrupt") / "m"
    ok(run_hoist("synth", "--arch", "llama-3.2-1b", "--layers", "2", "--quiet", out))
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    assert size > 700e6, size
    return out, size


def resident_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def bytes_read(io_file: str) -> int:
    with open(io_file) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def running(pid: int, binary: Path) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/exe") == str(Path(binary).resolve())
    except (FileNotFoundError, ProcessLookupError):
        return False


def start_load(hoist_bin, path, err: Path, ignore_sigint: bool = False, device: str = "cpu") -> subprocess.Popen:
    """`hoist load PATH` with one reader, once it fills its arena (or the emulated GPU's memory)."""
    with open(err, "w") as stderr:
        proc = subprocess.Popen([str(hoist_bin), "load", str(path), "--device", device, "--threads", "1", "-q"],
                                stdout=subprocess.DEVNULL, stderr=stderr,
                                preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint
                                else None)
    # Until the child has exec'd it has its parent's pages (this pytest's,
    # with torch in them, say) and not yet the command's signal handler.
    deadline = time.monotonic() + 60
    while not running(proc.pid, hoist_bin):
        assert time.monotonic() < deadline, "the command never started"
        time.sleep(0.0005)
    while (rss := resident_bytes(proc.pid)) is not None and rss < TRIGGER_BYTES:
        assert time.monotonic() < deadline, "the load never filled 64 MiB of its arena"
        time.sleep(0.0005)
    return proc


def reap(proc: subprocess.Popen) -> int:
    """Waits for `proc`; returns the bytes it read (/proc/PID/io's rchar)."""
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: its /proc/PID/io stays
    read = bytes_read(f"/proc/{proc.pid}/io")
    proc.wait()
    return read


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_load_stops_on_a_signal_says_so_and_ends_by_it(hoist_bin, model, tmp_path, signum):
    """Ended by the signal itself (a shell's $? is 130 or 143): a shell loop
    or a supervisor then sees the signal, not an ordinary failure."""
    path, size = model
    err = tmp_path / "stderr"
    proc = start_load(hoist_bin, path, err)
    os.kill(proc.pid, signum)
    read = reap(proc)
    name = signal.Signals(signum).name
    assert proc.returncode == -signum, (proc.returncode, err.read_text())
    assert err.read_text() == f"error: {path}: load interrupted by {name}\n"
    assert read < size / 2, f"{read} bytes read: the load ran on after the signal"


def test_cli_load_onto_a_gpu_stops_on_a_signal(emu_bin, model, tmp_path):
    """The same onto the emulated GPU (the CUDA backend over a runtime
    emulated on the host): the copies queued from the staging ring are
    waited for before the ring is freed (the emulator aborts on a
    cudaFreeHost that queued copies still read), and the command still ends
    by the signal."""
    path, size = model
    err = tmp_path / "stderr"
    proc = start_load(emu_bin, path, err, device="cuda:0")
    os.kill(proc.pid, signal.SIGINT)
    read = reap(proc)
    assert proc.returncode == -signal.SIGINT, (proc.returncode, err.read_text())
    assert err.read_text() == f"error: {path}: load interrupted by SIGINT\n"
    assert read < size / 2, f"{read} bytes read: the load ran on after the signal"


def test_cli_load_started_ignoring_sigint_goes_on_ignoring_it(hoist_bin, model, tmp_path):
    """A background job of a script starts with SIGINT ignored: a Ctrl-C
    meant for the foreground must not stop it."""
    path, size = model
    err = tmp_path / "stderr"
    proc = start_load(hoist_bin, path, err, ignore_sigint=True)
    os.kill(proc.pid, signal.SIGINT)
    read = reap(proc)
    assert proc.returncode == 0, err.read_text()
    assert err.read_text() == ""
    assert read >= size * 0.99, read


# The start of the Python programs below: resident() and bytes_read() for
# the process itself, and its arguments: path, trigger.
PROGRAM_PRELUDE = r"""
import json, os, signal, sys, threading, time
import hoist

path, trigger = sys.argv[1], int(sys.argv[2])

def resident():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

def io_bytes(field):
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

def bytes_read():
    return io_bytes("rchar")

def sigint_once(reached):
    # SIGINT to this process, from a thread of its own, once reached() is true.
    def watch():
        while not reached():
            time.sleep(0.0005)
        os.kill(os.getpid(), signal.SIGINT)
    threading.Thread(target=watch, daemon=True).start()
"""

PYTHON_LOAD = PROGRAM_PRELUDE + r"""
base = resident()
read_before = bytes_read()
sigint_once(lambda: resident() >= base + trigger)
try:
    hoist.load(path, device="cpu", threads=1)
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "KeyboardInterrupt"
read = bytes_read() - read_before
after = resident()
again = hoist.load(path, device="cpu", only=r"model\.norm\.weight")
print(json.dumps({"outcome": outcome, "base": base, "read": read, "after": after, "again": again.keys()}))
"""


def test_python_load_raises_keyboard_interrupt_and_returns_its_memory(hoist_bin, model):
    pytest.importorskip("hoist", reason="the hoist Python module is not built (run with PYTHONPATH=build/python)")
    path, size = model
    proc = subprocess.run([sys.executable, "-c", PYTHON_LOAD, str(path), str(TRIGGER_BYTES)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["outcome"] == "KeyboardInterrupt"
    assert got["read"] < size / 2, f"{got}: the load ran on after Ctrl-C"
    # The arena is gone with the interrupted load, and the module loads again.
    assert got["after"] - got["base"] < 32 << 20, got
    assert got["again"] == ["model.norm.weight"]


def own_bytes_read() -> int:
    return bytes_read("/proc/self/io")


def test_python_progress_reports_the_bytes_read_as_the_load_runs(model):
    hoist = pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    path, size = model
    tensor_bytes = sum(t["nbytes"] for t in json.loads(subprocess.run(
        [os.environ.get("HOIST_BIN", "build/hoist"), "inspect", "--json", str(path)],
        capture_output=True, text=True, check=True).stdout)["tensors"])
    calls = []
    loaded = hoist.load(path, device="cpu", threads=1, progress=lambda done, total: calls.append((done, total)))
    assert len(loaded) > 0
    assert {total for _, total in calls} == {tensor_bytes}
    dones = [done for done, _ in calls]
    assert dones == sorted(dones), dones
    assert calls[-1] == (tensor_bytes, tensor_bytes)
    assert any(done < tensor_bytes for done in dones), f"no call while the load ran: {calls}"


def test_python_progress_that_raises_stops_the_load_and_returns_its_memory(model):
    hoist = pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    path, size = model

    def stop(done, total):
        if done < total:
            raise RuntimeError(f"stopped at {done} of {total}")

    before, read_before = resident_bytes(os.getpid()), own_bytes_read()
    with pytest.raises(RuntimeError, match="stopped at"):
        hoist.load(path, device="cpu", threads=1, progress=stop)
    read = own_bytes_read() - read_before
    assert read < size / 2, f"{read} bytes read: the load ran on after its callback raised"
    assert resident_bytes(os.getpid()) - before < 32 << 20


DAEMON_LOAD = PROGRAM_PRELUDE + r"""
with_progress = sys.argv[3] == "1"
base = resident()
progress = (lambda done, total: None) if with_progress else None
threading.Thread(target=lambda: hoist.load(path, device="cpu", threads=1, progress=progress), daemon=True).start()
while resident() < base + trigger:
    time.sleep(0.0005)
print("exiting while the daemon thread loads", flush=True)
"""


DAEMONS_AT_EXIT = PROGRAM_PRELUDE + r"""
import atexit
# Registered after hoist's own hook, so it runs first: the main thread holds
# the GIL in C code for a while, and the daemon threads' 20 ms waits end
# meanwhile and queue for the GIL that Python then hands them as it shuts down.
atexit.register(lambda: [bytes(64 << 20) for _ in range(20)])
for _ in range(4):
    threading.Thread(target=lambda: hoist.load(path, device="cpu", threads=1, progress=lambda d, t: None),
                     daemon=True).start()
time.sleep(0.3)
print("exiting while the daemon threads load", flush=True)
"""


def test_python_exits_cleanly_while_daemon_threads_wait_for_the_gil(model):
    """Daemon threads whose waits end while Python exits: asking for the GIL
    then would end them (std::terminate from C++); they must block instead.
    Before hoist's atexit hook, 24 of 30 such runs aborted."""
    pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    path, _ = model
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", DAEMONS_AT_EXIT, str(path), "0"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, (proc.returncode, proc.stderr)
        assert proc.stdout == "exiting while the daemon threads load\n"
        assert proc.stderr == ""  # their loads end in SystemExit, which ends a thread quietly


# Python's exit cancels daemon threads' loads; it must not hold up anything else.
AT_EXIT_PROGRAMS = {
    # An atexit handler registered before hoist was imported runs after
    # hoist's own: a load there, on the main thread, runs as ever.
    "a load in a later atexit handler": r"""
import atexit, sys
path = sys.argv[1]
def at_exit():
    import hoist
    print("ok: loaded in atexit", len(hoist.load(path, device="cpu")), flush=True)
atexit.register(at_exit)
import hoist
""",
    # A daemon thread that imports hoist itself, and an atexit handler that
    # waits for it: the load is cancelled at exit, and the join returns.
    "an atexit join of a daemon loader": r"""
import atexit, sys, threading, time
path = sys.argv[1]
def work():
    import hoist
    while True:
        hoist.load(path, device="cpu", threads=1)
t = threading.Thread(target=work, daemon=True)
atexit.register(t.join)
t.start()
time.sleep(1)
print("ok: the program ended its main part", flush=True)
""",
    # A daemon loader that does other work between loads: a load it starts
    # once exit has begun is refused at once (SystemExit), so the join returns.
    "an atexit join of a daemon loader between loads": r"""
import atexit, sys, threading, time
path = sys.argv[1]
def work():
    import hoist
    while True:
        hoist.load(path, device="cpu", threads=1, only="norm")
        time.sleep(0.5)
t = threading.Thread(target=work, daemon=True)
atexit.register(t.join)
t.start()
time.sleep(1.2)
print("ok: the program ended its main part", flush=True)
""",
    # A signal handler that runs the exit functions from inside a load on
    # the main thread: the hook must not wait for the load it interrupted.
    "the exit functions run by a signal handler during a load": r"""
import atexit, os, signal, sys, time
import hoist
path = sys.argv[1]
def on_alarm(sig, frame):
    start = time.time()
    atexit._run_exitfuncs()
    print(f"ok: the exit functions took {time.time() - start:.1f} s", flush=True)
    os._exit(0 if time.time() - start < 5 else 1)
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.15)
while True:
    hoist.load(path, device="cpu", threads=1)
""",
    # hoist first imported while the exit functions run: its own hook is
    # never run, so its daemon loads must see exit as begun.
    "hoist imported during exit": r"""
import atexit, sys, threading, time
path = sys.argv[1]
def at_exit():
    import hoist
    def work():
        while True:
            hoist.load(path, device="cpu", threads=1, progress=lambda d, t: None)
    for _ in range(4):
        threading.Thread(target=work, daemon=True).start()
    time.sleep(0.3)
atexit.register(at_exit)
print("ok: the program ended its main part", flush=True)
""",
    # A fork while another thread loads: the child's exit must not wait on
    # a lock the parent's threads held.
    "forked children exiting while the parent loads": r"""
import os, sys, threading, time
import hoist
path = sys.argv[1]
def bg():
    while True:
        hoist.load(path, device="cpu", threads=1, progress=lambda d, t: None)
threading.Thread(target=bg, daemon=True).start()
time.sleep(0.3)
for _ in range(5):
    pid = os.fork()
    if pid == 0:
        sys.exit(0)
    deadline = time.time() + 20
    while os.waitpid(pid, os.WNOHANG)[0] == 0:
        if time.time() > deadline:
            sys.exit("a forked child did not exit")
        time.sleep(0.01)
print("ok: the program ended its main part", flush=True)
""",
}


@pytest.mark.parametrize("program", list(AT_EXIT_PROGRAMS))
def test_python_exit_holds_up_nothing_but_daemon_loads(model, program):
    pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    path, _ = model
    proc = subprocess.run([sys.executable, "-c", AT_EXIT_PROGRAMS[program], str(path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.splitlines()[-1:] and proc.stdout.splitlines()[-1].startswith("ok:"), proc.stdout
    assert proc.stderr == ""


@pytest.mark.parametrize("with_progress", [False, True], ids=["no callback", "with a progress callback"])
def test_python_exits_cleanly_while_a_daemon_thread_loads(model, with_progress):
    """A daemon thread still loading when the program ends: Python ends such
    threads if they ask for the GIL during shutdown, which from a waiting
    C++ frame is std::terminate (exit 134), so the wait must not ask then."""
    pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    path, size = model
    proc = subprocess.run([sys.executable, "-c", DAEMON_LOAD, str(path), str(TRIGGER_BYTES), "1" if with_progress else "0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout == "exiting while the daemon thread loads\n"


INTERRUPT_EVERYWHERE = r"""
import signal, sys
import hoist
path = sys.argv[1]
# A Ctrl-C that lands while hoist.load looks up the current thread (Python
# code, where the interpreter runs signal handlers): a 20 us timer whose
# handler raises only there.
def handler(sig, frame):
    if frame is not None and frame.f_code.co_name in ("current_thread", "main_thread"):
        raise KeyboardInterrupt
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.00002, 0.00002)
done = interrupted = 0
for _ in range(3000):
    try:
        hoist.load(path, device="cpu", threads=1)
        done += 1
    except KeyboardInterrupt:
        interrupted += 1
signal.setitimer(signal.ITIMER_REAL, 0)
print("loads", done, "interrupted", interrupted, flush=True)
"""


def test_a_keyboard_interrupt_anywhere_in_load_raises_and_never_aborts(tiny):
    """Before the worker thread starts, a KeyboardInterrupt must not leave a
    running std::thread to be destroyed (std::terminate)."""
    pytest.importorskip("hoist", reason="the hoist Python module is not built (PYTHONPATH=build/python)")
    proc = subprocess.run([sys.executable, "-c", INTERRUPT_EVERYWHERE, str(tiny / "model.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    interrupted = int(proc.stdout.split()[-1])
    assert interrupted > 0, proc.stdout  # the handler did fire inside load



# ------------------------------------------------------------ convert


def bytes_written(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_convert_stops_on_a_signal_and_leaves_nothing(hoist_bin, model, tmp_path, signum):
    """Interrupted once it has written 64 MiB of its output: no partial file
    a load could take for a checkpoint stays behind, nor the directory it made."""
    path, size = model
    dst = tmp_path / "out" / "converted"
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([str(hoist_bin), "convert", str(path), str(dst), "--threads", "1",
                                 "--max-shard-size", "200MB"], stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + 60
    while not running(proc.pid, hoist_bin) or (bytes_written(proc.pid) or 0) < TRIGGER_BYTES:
        assert proc.poll() is None and time.monotonic() < deadline, "the convert never wrote 64 MiB"
        time.sleep(0.0005)
    os.kill(proc.pid, signum)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    written = bytes_written(proc.pid)
    proc.wait()
    name = signal.Signals(signum).name
    assert proc.returncode == -signum, (proc.returncode, err.read_text())
    assert err.read_text() == f"error: {dst}: convert interrupted by {name}; nothing was written\n"
    assert written < size / 2, f"{written} bytes written: the convert ran on after the signal"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stderr"]


PYTHON_CONVERT = PROGRAM_PRELUDE + r"""
dst = sys.argv[3]
def written():
    return io_bytes("wchar")
before = written()
sigint_once(lambda: written() >= before + trigger)
try:
    hoist.convert(path, dst, threads=1, max_shard_size="200MB")
    outcome = "finished"
except KeyboardInterrupt:
    outcome = "KeyboardInterrupt"
print(json.dumps({"outcome": outcome, "written": written() - before, "exists": os.path.exists(dst)}))
"""


def test_python_convert_raises_keyboard_interrupt_and_leaves_nothing(model, tmp_path):
    pytest.importorskip("hoist", reason="the hoist Python module is not built (run with PYTHONPATH=build/python)")
    path, size = model
    dst = tmp_path / "converted"
    proc = subprocess.run([sys.executable, "-c", PYTHON_CONVERT, str(path), str(TRIGGER_BYTES), str(dst)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["outcome"] == "KeyboardInterrupt"
    assert got["written"] < size / 2, f"{got}: the convert ran on after Ctrl-C"
    assert not got["exists"] and list(tmp_path.iterdir()) == []

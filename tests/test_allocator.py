"""dtifast.allocator: freed blocks stay in the process, so a second block of the same size does not
page-fault; and the entry points that train turn it on.

Each check runs in a fresh interpreter: the setting is process-wide and must not leak into other tests.
"""
import platform
import subprocess
import sys

import pytest

from dtifast.allocator import retain_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Allocates, writes and frees a 64 MiB block with the C library's malloc (as torch's CPU allocator does),
# then counts the minor page faults of doing it again.
FAULTS_OF_SECOND_BUFFER = """
import ctypes, resource
{setup}
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
n = 64 * 2 ** 20
def write_block():
    p = libc.malloc(n)
    ctypes.memset(p, 1, n)
    libc.free(p)
write_block()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
write_block()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS_OF_SECOND_BUFFER.format(setup=setup)], capture_output=True,
                         text=True, check=True, timeout=120)
    return int(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_second_buffer_reuses_the_freed_pages():
    pages = 64 * 2 ** 20 // 4096
    default = _faults("")
    retained = _faults("from dtifast.allocator import retain_freed_memory; assert retain_freed_memory()")
    assert default > pages // 2, f"expected the default allocator to fault the new buffer in, got {default} faults"
    assert retained < pages // 20, f"expected the freed buffer to be reused, got {retained} faults for {pages} pages"


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, 1.5, "1"])
def test_rejects_thresholds_mallopt_cannot_take(bad):
    with pytest.raises(ValueError, match="threshold_bytes"):
        retain_freed_memory(bad)


@glibc_only
@pytest.mark.parametrize("entry", ["from dtifast.cli import main; main(['train', '--out', {out!r}, 'no-such-config'])",
                                   "from dtifast.demo import main; main(['--out', {out!r}, '--n-images', '1'])"])
def test_training_entry_points_turn_it_on(entry, tmp_path):
    # Each entry point stops at its bad argument, after the allocator setup, whose effect is then read
    # back through the faults of the second buffer.
    setup = f"try:\n    {entry.format(out=str(tmp_path / 'run'))}\nexcept ValueError:\n    pass"
    faults = _faults(setup)
    assert faults < 64 * 2 ** 20 // 4096 // 20, f"the entry point left the default allocator ({faults} faults)"

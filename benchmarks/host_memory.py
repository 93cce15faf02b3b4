"""Host-side helpers the benchmarks share: a cold page cache, and a process's own peak resident memory."""

from __future__ import annotations

import os
import resource


def drop_page_cache() -> bool:
    """Whether the kernel's page cache could be dropped (root in the machine): then the next read is from disk."""
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def evict_files(folders: list[str]) -> bool:
    """Only these folders' files out of the page cache (the libraries stay cached, as on a workstation that ran the
    app a while ago): whether every file could be evicted. posix_fadvise DONTNEED drops a file's clean pages."""
    ok = True
    for folder in folders:
        for root, _dirs, names in os.walk(folder):
            for name in names:
                try:
                    fd = os.open(os.path.join(root, name), os.O_RDONLY)
                except OSError:
                    ok = False
                    continue
                try:
                    os.fdatasync(fd)
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError:
                    ok = False
                finally:
                    os.close(fd)
    return ok


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, the high-water mark of its own memory map. ru_maxrss would carry
    the parent's mark across fork+exec (a benchmark parent that built a 33 GB pipeline read 32.4 GiB through it in
    its children: docs/benchmarks.md "Session 34")."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

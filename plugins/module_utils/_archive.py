# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""Docker image archives read and written as streams.

Writing: ``ArchiveWriter`` takes the raw tar stream of ``docker save`` chunk by
chunk, compresses it on the way (pigz / ``zstd -T0`` when present), hashes the
bytes that reach the disk, and writes them to a hidden temporary file in the
target folder that is renamed to its final name only by ``commit()``.

Reading: ``read_archive`` makes one sequential pass over a file: it hashes the
raw bytes, decompresses them, parses the tar stream itself (ustar, GNU long
names, PAX headers) and hashes every member while it goes by, keeping only
small JSON members in memory. Nothing is extracted to disk. It then checks the
docker-archive ``manifest.json`` and the OCI ``index.json`` (nested indexes of
the containerd store included) against what the stream held.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import fnmatch
import gzip
import hashlib
import json
import os
import posixpath
import queue
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import zlib
from contextlib import contextmanager

from ansible_collections.pibackup.docker_usb.plugins.module_utils._identity import fingerprint_from_config


COMPRESSIONS = ('none', 'gzip', 'zstd')
SUFFIX = {'none': '.tar', 'gzip': '.tar.gz', 'zstd': '.tar.zst'}

# Largest file FAT32 can hold.
FAT32_MAX_FILE_BYTES = 4294967295

# Measured on the 2-core lab machine with a 200 MB archive, page cache warm,
# median of 5 (read_archive / hash_file / ArchiveWriter with fsync):
# 64 KiB 1.01 / 0.41 / 1.03 s, 1 MiB 0.52 / 0.32 / 0.82 s, 4 MiB 0.83 / 0.36 / 0.87 s.
# 1 MiB is the fastest for all three and keeps the buffers small.
DEFAULT_CHUNK_SIZE = 1024 * 1024

# Members up to this size that look like JSON are kept in memory for the
# manifest checks; everything else is only hashed while it streams by.
JSON_MEMBER_MAX = 4 * 1024 * 1024
# How many bytes ArchiveWriter hands to its checking thread at once.
SCAN_BATCH_BYTES = 1024 * 1024
JSON_TOTAL_MAX = 64 * 1024 * 1024

_MAGIC = (
    (b'\x1f\x8b', 'gzip'),
    (b'\x28\xb5\x2f\xfd', 'zstd'),
)
# Compressions docker load knows but this collection does not write or read.
_UNSUPPORTED_MAGIC = (
    (b'BZh', 'bzip2'),
    (b'\xfd7zXZ\x00', 'xz'),
)

_HEX64 = re.compile(r'^[0-9a-f]{64}$')
# Extended (PAX / GNU long name) headers larger than this are refused.
_EXTENDED_MAX = 1024 * 1024
_PARTIAL = '.*.partial-*'

_INDEX_TYPES = (
    'application/vnd.oci.image.index.v1+json',
    'application/vnd.docker.distribution.manifest.list.v2+json',
)
_MANIFEST_TYPES = (
    'application/vnd.oci.image.manifest.v1+json',
    'application/vnd.docker.distribution.manifest.v2+json',
)
# Layer media types whose blob is the uncompressed layer tar (blob digest == diffID).
_TAR_LAYER_TYPES = (
    'application/vnd.oci.image.layer.v1.tar',
    'application/vnd.docker.image.rootfs.diff.tar',
)


class ArchiveError(Exception):
    """An archive could not be written or read; names the file, the member and the cause."""

    def __init__(self, cause, path=None, member=None):
        self.cause = cause
        self.path = path
        self.member = member
        text = cause
        if member:
            text = 'member %s: %s' % (member, text)
        if path:
            text = '%s: %s' % (path, text)
        super(ArchiveError, self).__init__(text)


def detect_compression(head):
    """Return 'none', 'gzip' or 'zstd' from the first bytes of a file (its magic, not its name).

    Raises ArchiveError for bzip2 and xz, which docker load reads but this
    collection neither writes nor checks.
    """
    head = bytes(head[:8])
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            raise ArchiveError('compressed with %s; only uncompressed, gzip and zstd archives are supported '
                               '(decompress it with %s -d first)' % (name, name))
    return 'none'


def _detect_file_compression(path):
    try:
        with open(path, 'rb') as handle:
            head = handle.read(8)
    except (IOError, OSError) as exc:
        raise ArchiveError('cannot open: %s' % (exc.strerror or exc), path=path)
    try:
        return detect_compression(head)
    except ArchiveError as exc:
        raise ArchiveError(exc.cause, path=path)


def _zstd_missing(path):
    return ArchiveError('zstd compression needs the zstd command, which is not on PATH; '
                        'install the zstd package (apt-get install zstd)', path=path)


def hash_file(path, chunk_size=DEFAULT_CHUNK_SIZE):
    """Return (sha256 hex digest, size in bytes) of a file, read once."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, 'rb') as handle:
            buf = bytearray(chunk_size)
            view = memoryview(buf)
            while True:
                count = handle.readinto(buf)
                if not count:
                    break
                digest.update(view[:count])
                size += count
    except (IOError, OSError) as exc:
        raise ArchiveError('cannot read: %s' % (exc.strerror or exc), path=path)
    return digest.hexdigest(), size


def remove_stale_partials(folder):
    """Remove the temporary files ('.<name>.partial-<random>') an interrupted write left; return their names."""
    removed = []
    try:
        names = sorted(os.listdir(folder))
    except (IOError, OSError) as exc:
        raise ArchiveError('cannot list the folder: %s' % (exc.strerror or exc), path=folder)
    for name in names:
        if not fnmatch.fnmatchcase(name, _PARTIAL):
            continue
        full = os.path.join(folder, name)
        try:
            if not stat.S_ISREG(os.lstat(full).st_mode):
                continue
            os.unlink(full)
        except (IOError, OSError) as exc:
            if exc.errno == errno.ENOENT:
                continue
            raise ArchiveError('cannot remove a stale temporary file: %s' % (exc.strerror or exc), path=full)
        removed.append(name)
    return removed


# ---------------------------------------------------------------------------
# Writing


def _compressor_argv(compression, level):
    """The argument list of the external compressor to use, or None for the in-process one."""
    if compression == 'gzip':
        pigz = shutil.which('pigz')
        if pigz:
            return [pigz, '-c', '-%d' % (level or 6)]
        return None
    zstd = shutil.which('zstd')
    if zstd:
        return [zstd, '-q', '-c', '-T0', '-%d' % (level or 3)]
    return None


class ArchiveWriter(object):
    """Write an archive under a temporary name in its folder; ``commit()`` renames it into place.

    Use it as a context manager: an exception in the block aborts (the
    temporary file is removed, the final path is never touched); leaving the
    block without ``commit()`` aborts too, so an early return can never
    publish an incomplete archive.

    With ``inspect=True`` the tar stream is also parsed and checked while it
    goes by (in a thread beside the writing), exactly as read_archive checks
    a file: after ``commit()``, ``report`` is the ArchiveReport of what was
    written, without reading the archive again. It checks the tar bytes the
    engine sent; the compressed bytes on disk are covered by ``sha256``.
    With ``inspect='structure'`` the stream is parsed and the manifest, index
    and configs are checked (with their digests), but layer blobs are not hashed
    a second time: the engine produced them, and the file's sha256 computed
    while writing covers what reached the disk. That is the cheap check made
    after every save; read_archive() does the whole check.
    """

    def __init__(self, final_path, compression='none', mode=0o644, uid=None, gid=None,
                 max_file_bytes=None, chunk_size=DEFAULT_CHUNK_SIZE, level=None, inspect=False):
        if compression not in COMPRESSIONS:
            raise ArchiveError('unknown compression %r, expected one of %s' % (compression, ', '.join(COMPRESSIONS)),
                               path=final_path)
        self.final_path = final_path
        self.compression = compression
        self.mode = mode
        self.max_file_bytes = max_file_bytes
        self.chunk_size = chunk_size
        self.bytes_written = 0
        self.tool = None
        self.warnings = []
        self._digest = hashlib.sha256()
        self._fd = None
        self._proc = None
        self._pump = None
        self._pump_error = None
        self._stderr = None
        self._zlib = None
        self._done = False
        self.report = None
        self._scan = None
        self._scan_thread = None
        self._scan_queue = None
        self._scan_batch = []
        self._scan_batch_bytes = 0
        self._scan_eof = False
        self._scan_error = None

        folder = os.path.dirname(os.path.abspath(final_path))
        self.temp_path = os.path.join(
            folder, '.%s.partial-%s' % (os.path.basename(final_path), os.urandom(6).hex()))
        argv = None
        if compression == 'gzip':
            argv = _compressor_argv('gzip', level)
            if argv is None:
                self._zlib = zlib.compressobj(level or 6, zlib.DEFLATED, 31)
                self.tool = 'python zlib'
        elif compression == 'zstd':
            argv = _compressor_argv('zstd', level)
            if argv is None:
                raise _zstd_missing(final_path)

        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, 'O_CLOEXEC', 0)
        try:
            self._fd = os.open(self.temp_path, flags, 0o600)
        except (IOError, OSError) as exc:
            raise ArchiveError('cannot create the temporary file %s: %s' % (self.temp_path, exc.strerror or exc),
                               path=final_path)
        try:
            self._set_owner_and_mode(uid, gid, mode)
            if argv:
                self._start_compressor(argv)
            if inspect:
                self._start_scan(JSON_MEMBER_MAX if inspect == 'structure' else None)
        except BaseException:
            self.abort()
            raise

    def _set_owner_and_mode(self, uid, gid, mode):
        # Explicit, so the result never depends on the caller's umask. exFAT and
        # FAT32 have no owners or modes (the mount options decide): tolerate that.
        unsupported = (errno.EPERM, errno.ENOTSUP, errno.ENOSYS, errno.EINVAL)
        if uid is not None or gid is not None:
            try:
                os.fchown(self._fd, -1 if uid is None else uid, -1 if gid is None else gid)
            except OSError as exc:
                if exc.errno not in unsupported:
                    raise ArchiveError('cannot set owner %s:%s: %s' % (uid, gid, exc.strerror), path=self.temp_path)
                self.warnings.append('owner %s:%s not set on %s: %s' % (uid, gid, self.final_path, exc.strerror))
        try:
            os.fchmod(self._fd, mode)
        except OSError as exc:
            if exc.errno not in unsupported:
                raise ArchiveError('cannot set mode %o: %s' % (mode, exc.strerror), path=self.temp_path)
            self.warnings.append('mode %o not set on %s: %s' % (mode, self.final_path, exc.strerror))

    def _start_compressor(self, argv):
        self.tool = ' '.join(argv)
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._stderr, close_fds=True)
        except (IOError, OSError) as exc:
            raise ArchiveError('cannot start %s: %s' % (argv[0], exc.strerror or exc), path=self.final_path)
        self._pump = threading.Thread(target=self._pump_output, name='archive-compressor-output')
        self._pump.daemon = True
        self._pump.start()

    def _start_scan(self, hash_limit):
        # Chunks go to the checking thread in batches of SCAN_BATCH_BYTES: one queue
        # hand-over per engine chunk (about 32 KiB) cost more CPU than the check itself.
        self._scan_batch = []
        self._scan_batch_bytes = 0
        self._scan_queue = queue.Queue(maxsize=4)
        self._scan = _TarScan(_ByteStream(self._scan_chunks()), hash_limit=hash_limit)
        self._scan_thread = threading.Thread(target=self._run_scan, name='archive-inspector')
        self._scan_thread.daemon = True
        self._scan_thread.start()

    def _scan_chunks(self):
        while True:
            batch = self._scan_queue.get()
            if batch is None:
                self._scan_eof = True
                return
            yield from batch

    def _run_scan(self):
        try:
            self._scan.run()
        except Exception as exc:  # reported by commit()
            self._scan_error = exc
        finally:
            # The scan may stop early (a damaged header): keep taking chunks so write() never blocks.
            while not self._scan_eof:
                if self._scan_queue.get() is None:
                    self._scan_eof = True

    def _send_scan_batch(self):
        if self._scan_batch:
            self._scan_queue.put(self._scan_batch)
            self._scan_batch = []
            self._scan_batch_bytes = 0

    def _stop_scan(self):
        if self._scan_thread is not None:
            self._send_scan_batch()
            self._scan_queue.put(None)
            self._scan_thread.join()
            self._scan_thread = None

    def _pump_output(self):
        try:
            while True:
                data = self._proc.stdout.read1(self.chunk_size)
                if not data:
                    break
                self._to_disk(data)
        except BaseException as exc:  # handed to the writing thread
            self._pump_error = exc
            self._kill()

    def _to_disk(self, data):
        size = len(data)
        if self.max_file_bytes is not None and self.bytes_written + size > self.max_file_bytes:
            raise ArchiveError(
                'the archive would exceed %d bytes, the largest file this filesystem holds (FAT32: 4 GiB - 1); '
                'format the stick as exFAT or use compression (gzip or zstd)' % self.max_file_bytes,
                path=self.final_path)
        view = memoryview(data)
        done = 0
        try:
            while done < size:
                done += os.write(self._fd, view[done:])
        except OSError as exc:
            written = self.bytes_written + done
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ArchiveError('no space left on the device after writing %d bytes to %s'
                                   % (written, self.temp_path), path=self.final_path)
            raise ArchiveError('write failed after %d bytes to %s: %s' % (written, self.temp_path, exc.strerror),
                               path=self.final_path)
        self._digest.update(view)
        self.bytes_written += size

    @property
    def sha256(self):
        """Hex sha256 of the bytes written to disk so far."""
        return self._digest.hexdigest()

    def write(self, chunk):
        """Add raw (uncompressed) tar bytes from the engine."""
        if self._done:
            raise ArchiveError('write after commit or abort', path=self.final_path)
        if not chunk:
            return
        if self._scan_thread is not None:
            self._scan_batch.append(bytes(chunk))
            self._scan_batch_bytes += len(chunk)
            if self._scan_batch_bytes >= SCAN_BATCH_BYTES:
                self._send_scan_batch()
        if self._proc is not None:
            self._check_pump()
            try:
                self._proc.stdin.write(chunk)
            except (IOError, OSError, ValueError):
                self._finish_compressor()  # raises the cause
                raise ArchiveError('the compressor %s stopped taking data' % self.tool, path=self.final_path)
            return
        if self._zlib is not None:
            chunk = self._zlib.compress(chunk)
            if not chunk:
                return
        self._to_disk(chunk)

    def _check_pump(self):
        if self._pump_error is not None:
            raise self._pump_error

    def _finish_compressor(self):
        try:
            self._proc.stdin.close()
        except (IOError, OSError):
            pass
        self._pump.join()
        code = self._proc.wait()
        self._check_pump()
        if code != 0:
            self._stderr.seek(0)
            text = self._stderr.read().decode('utf-8', 'replace').strip()
            raise ArchiveError('%s exited with code %d: %s' % (self.tool, code, text or 'no message'),
                               path=self.final_path)

    def commit(self, check=None):
        """Flush, fsync, check, rename to the final name, fsync the folder; return (sha256 hex, bytes on disk).

        ``check(temp_path, sha256, report)`` is called on the complete, fsynced file before the
        rename (``report`` is the inspection's, or None); whatever it raises aborts the write: the
        temporary file is removed and the final path is never touched.
        """
        if self._done:
            raise ArchiveError('commit after commit or abort', path=self.final_path)
        try:
            self._stop_scan()
            if self._proc is not None:
                self._finish_compressor()
            elif self._zlib is not None:
                self._to_disk(self._zlib.flush())
            try:
                os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            except OSError as exc:
                raise ArchiveError('cannot complete %s: %s' % (self.temp_path, exc.strerror), path=self.final_path)
            if self._scan is not None:
                self.report = ArchiveReport(self.final_path)
                self.report.sha256 = self.sha256
                self.report.bytes = self.bytes_written
                self.report.compression = self.compression
                _check_members(self.report, self._scan)
                if self._scan_error is not None:
                    self.report.problems.append('checking the stream failed: %s' % self._scan_error)
            if check is not None:
                check(self.temp_path, self.sha256, self.report)
            try:
                os.rename(self.temp_path, self.final_path)
            except OSError as exc:
                raise ArchiveError('cannot complete %s: %s' % (self.temp_path, exc.strerror), path=self.final_path)
            self._done = True
        except BaseException:
            self.abort()
            raise
        fsync_folder(os.path.dirname(os.path.abspath(self.final_path)))
        return self.sha256, self.bytes_written

    def _kill(self):
        if self._proc is not None and self._proc.poll() is None:
            try:
                self._proc.kill()
            except OSError:
                pass

    def abort(self):
        """Remove the temporary file; never touches the final path. Safe to call more than once."""
        if self._done:
            return
        self._done = True
        self._stop_scan()
        if self._proc is not None:
            self._kill()
            for pipe in (self._proc.stdin, self._proc.stdout):
                try:
                    pipe.close()
                except (IOError, OSError):
                    pass
            if self._pump is not None and self._pump is not threading.current_thread():
                self._pump.join()
            self._proc.wait()
        if self._stderr is not None:
            self._stderr.close()
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
        try:
            os.unlink(self.temp_path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, trace):
        self.abort()
        return False


def fsync_folder(folder):
    """fsync a folder so a rename in it is durable; folders that refuse it are left as they are."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some FUSE filesystems refuse fsync on a directory; the rename is already done
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Reading: raw bytes -> hash -> decompressor -> tar parser


class _StreamDamaged(Exception):
    """The compressed stream is damaged or ends early (a property of the content, not an I/O error)."""


class _RawReader(object):
    """Reads a file once in a background thread, hashing it.

    The chunks go either to ``sink`` (the stdin of a decompressor process) or
    to a small queue that ``chunks()`` empties. Hashing in its own thread lets
    it run beside the member hashing of the parser (hashlib releases the GIL).
    """

    def __init__(self, path, chunk_size, sink=None):
        self.path = path
        self.digest = hashlib.sha256()
        self.size = 0
        self.error = None
        self._chunk_size = chunk_size
        self._sink = sink
        self._owned_sink = sink
        self._queue = queue.Queue(maxsize=4)
        self._stop = threading.Event()
        self._drained = False
        try:
            self._handle = open(path, 'rb')
        except (IOError, OSError) as exc:
            raise ArchiveError('cannot open: %s' % (exc.strerror or exc), path=path)
        self._thread = threading.Thread(target=self._run, name='archive-reader')
        self._thread.daemon = True
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                data = self._handle.read(self._chunk_size)
                if not data:
                    break
                self.digest.update(data)
                self.size += len(data)
                if self._sink is not None:
                    try:
                        self._sink.write(data)
                    except (IOError, OSError, ValueError):
                        self._sink = None  # the decompressor gave up; keep hashing to the end
                else:
                    self._put(data)
        except (IOError, OSError) as exc:
            self.error = exc
        finally:
            if self._owned_sink is not None:
                try:
                    self._owned_sink.close()
                except (IOError, OSError, ValueError):
                    pass
            else:
                self._put(None)

    def _put(self, item):
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def chunks(self):
        while not self._drained:
            data = self._queue.get()
            if data is None:
                self._drained = True  # finish() drains again: never wait for a second end marker
                return
            yield data

    def finish(self):
        """Wait for the whole file to be hashed; return its hex sha256. Raises ArchiveError on I/O errors."""
        if self._owned_sink is None:
            for dummy in self.chunks():
                pass
        self._thread.join()
        self._handle.close()
        if self.error is not None:
            raise ArchiveError('read failed after %d bytes: %s' % (self.size, self.error.strerror or self.error),
                               path=self.path)
        return self.digest.hexdigest()

    def close(self):
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()
        self._handle.close()


def _gunzip(chunks, limit):
    """Decompress (possibly multi-member) gzip chunks, never more than ``limit`` bytes at a time."""
    decomp = zlib.decompressobj(47)
    trailing = False
    for data in chunks:
        while data and not trailing:
            if decomp.eof:
                if not data.startswith(b'\x1f'):
                    trailing = True  # padding after the last member: ignored, as gzip(1) does
                    break
                decomp = zlib.decompressobj(47)
            try:
                out = decomp.decompress(data, limit)
                if out:
                    yield out
                # Output was capped: more can be pending even when all input was taken.
                while not decomp.eof and not decomp.unconsumed_tail and len(out) == limit:
                    out = decomp.decompress(b'', limit)
                    if out:
                        yield out
            except zlib.error as exc:
                raise _StreamDamaged('gzip data is damaged (%s)' % exc)
            data = decomp.unused_data if decomp.eof else decomp.unconsumed_tail
    if not trailing and not decomp.eof:
        raise _StreamDamaged('gzip stream ends early (the file is truncated)')


class _Decoded(object):
    """The decompressed byte stream of an archive file, plus the raw file's hash."""

    def __init__(self, path, compression, chunk_size):
        self.path = path
        self._proc = None
        self._stderr = None
        self._chunk_size = chunk_size
        if compression == 'zstd':
            zstd = shutil.which('zstd')
            if not zstd:
                raise _zstd_missing(path)
            self._stderr = tempfile.TemporaryFile()
            self._proc = subprocess.Popen([zstd, '-q', '-d', '-c'], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._stderr, close_fds=True)
            try:
                self.raw = _RawReader(path, chunk_size, sink=self._proc.stdin)
            except BaseException:
                self._proc.kill()
                self._proc.stdin.close()
                self._proc.stdout.close()
                self._proc.wait()
                self._stderr.close()
                raise
            self.chunks = self._zstd_chunks()
        elif compression == 'gzip':
            self.raw = _RawReader(path, chunk_size)
            self.chunks = _gunzip(self.raw.chunks(), chunk_size)
        else:
            self.raw = _RawReader(path, chunk_size)
            self.chunks = self.raw.chunks()

    def _zstd_chunks(self):
        while True:
            data = self._proc.stdout.read1(self._chunk_size)
            if not data:
                break
            yield data
        code = self._proc.wait()
        if code != 0:
            self._stderr.seek(0)
            text = self._stderr.read().decode('utf-8', 'replace').strip()
            raise _StreamDamaged('zstd data is damaged or truncated (%s)' % (text or 'exit code %d' % code))

    def finish(self):
        """Drain what is left; return the raw file's hex sha256."""
        if self._proc is not None:
            self._proc.stdout.close()
            self._proc.wait()
            self._stderr.close()
        return self.raw.finish()

    def close(self):
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.stdout.close()
            self._proc.wait()
            self._stderr.close()
        self.raw.close()


class _ByteStream(object):
    """Reads exact amounts from an iterator of chunks without copying large data."""

    def __init__(self, chunks):
        self._chunks = chunks
        self._buf = b''
        self._view = memoryview(b'')
        self._pos = 0
        self.offset = 0

    def _fill(self):
        for data in self._chunks:
            if data:
                self._buf = data
                self._view = memoryview(data)
                self._pos = 0
                return True
        return False

    def read(self, size):
        """Return up to ``size`` bytes; fewer only at the end of the stream."""
        parts = []
        self.feed(size, parts.append)
        return b''.join(parts)

    def feed(self, size, consumer):
        """Pass the next ``size`` bytes to ``consumer`` (memoryviews); return how many there were."""
        need = size
        while need:
            avail = len(self._buf) - self._pos
            if not avail:
                if not self._fill():
                    break
                continue
            take = min(avail, need)
            if consumer is not None:
                consumer(self._view[self._pos:self._pos + take])
            self._pos += take
            need -= take
        self.offset += size - need
        return size - need

    def drain(self):
        while self._fill():
            self.offset += len(self._buf)
            self._buf = b''
            self._pos = 0


class _Member(object):
    __slots__ = ('name', 'kind', 'size', 'sha256', 'head', 'link', 'data')

    def __init__(self, name, kind, size):
        self.name = name
        self.kind = kind  # file, dir, symlink, hardlink, other
        self.size = size
        self.sha256 = None
        self.head = b''
        self.link = None  # for links: the target as a normalized archive path
        self.data = None  # kept JSON bytes


class _Collector(object):
    """Consumes a regular member's content: hashes it, keeps its head, keeps it if small."""

    def __init__(self, keep, hashed=True):
        self.digest = hashlib.sha256()
        self.hashed = hashed
        self.head = b''
        self.kept = bytearray() if keep else None

    def __call__(self, view):
        if self.hashed:
            self.digest.update(view)
        if len(self.head) < 8:
            self.head += bytes(view[:8 - len(self.head)])
        if self.kept is not None:
            self.kept += view


_ZERO_BLOCK = b'\0' * 512
_TYPES = {b'0': 'file', b'\0': 'file', b'7': 'file', b'1': 'hardlink', b'2': 'symlink', b'5': 'dir'}


def _octal(field):
    if field[:1] and (field[0] & 0x80):  # GNU base-256 for big sizes
        value = field[0] & 0x3f
        for byte in field[1:]:
            value = (value << 8) | byte
        return value
    text = field.split(b'\0', 1)[0].strip()
    return int(text, 8) if text else 0


def _header_checksum_ok(header):
    try:
        expected = _octal(header[148:156])
    except ValueError:
        return False
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    if expected == unsigned:
        return True
    # Some old tar writers summed signed chars.
    signed = unsigned - 256 * sum(1 for byte in header[:148] + header[156:] if byte > 127)
    return expected == signed


def _decode(raw):
    return raw.split(b'\0', 1)[0].decode('utf-8', 'surrogateescape')


def _parse_pax(data):
    records = {}
    pos = 0
    while pos < len(data):
        space = data.find(b' ', pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[space + 1:pos + length - 1]
        key, sep, value = record.partition(b'=')
        if sep:
            records[key.decode('utf-8', 'replace')] = value.decode('utf-8', 'surrogateescape')
        pos += length
    return records


def _clean(name):
    """Archive path as a comparable key: no leading './', no trailing '/'."""
    while name.startswith('./'):
        name = name[2:]
    return name.rstrip('/') if name != '/' else name


def _escapes(path):
    """Why a normalized-or-not archive path is unsafe, or None."""
    if path.startswith('/'):
        return 'absolute path'
    if '..' in path.split('/'):
        return "path climbs out with '..'"
    return None


def _pad(size):
    return (512 - size % 512) % 512


class _TarScan(object):
    """Streams over a tar, recording every member (hash, size, head, small JSON) and structure problems."""

    def __init__(self, stream, hash_limit=None):
        self.stream = stream
        # Members larger than hash_limit are not hashed (their sha256 stays None
        # and the digest checks skip them); None hashes every member.
        self.hash_limit = hash_limit
        self.members = {}
        self.problems = []
        self.kept_bytes = 0
        self.current = None  # member being read, for truncation messages
        self.last = None

    def _problem(self, text):
        self.problems.append(text)

    def _where(self):
        if self.current:
            return 'inside member %s' % self.current
        if self.last:
            return 'after member %s' % self.last
        return 'before the first member'

    def run(self):
        try:
            self._scan()
        except _StreamDamaged as exc:
            self._problem('%s, %s' % (exc, self._where()))

    def _read_data(self, size):
        data = self.stream.read(size)
        if len(data) < size:
            raise _Truncated(len(data), size)
        self.stream.feed(_pad(size), None)
        return data

    def _scan(self):
        pax = {}
        long_name = long_link = None
        while True:
            header = self.stream.read(512)
            if not header:
                self._problem('archive ends without the end-of-archive marker, %s (the file is truncated)'
                              % self._where())
                return
            if len(header) < 512:
                self._problem('archive ends inside a tar header, %s (the file is truncated)' % self._where())
                return
            if header == _ZERO_BLOCK:
                self.stream.drain()
                return
            if not _header_checksum_ok(header):
                self._problem('tar header checksum wrong at byte %d, %s (the archive is damaged)'
                              % (self.stream.offset - 512, self._where()))
                return
            typeflag = header[156:157]
            try:
                size = _octal(header[124:136])
            except ValueError:
                self._problem('tar header with an unreadable size at byte %d, %s (the archive is damaged)'
                              % (self.stream.offset - 512, self._where()))
                return
            if typeflag in (b'x', b'g', b'L', b'K'):
                if size > _EXTENDED_MAX:
                    self._problem('extended tar header of %d bytes at byte %d, %s: larger than %d bytes, refused'
                                  % (size, self.stream.offset - 512, self._where(), _EXTENDED_MAX))
                    return
                self.current = 'extended header of the next member'
                try:
                    data = self._read_data(size)
                except _Truncated as exc:
                    self._problem('archive ends %s after %d of %d bytes (the file is truncated)'
                                  % (self._where(), exc.got, exc.size))
                    return
                self.current = None
                if typeflag == b'x':
                    pax = _parse_pax(data)
                elif typeflag == b'L':
                    long_name = _decode(data)
                elif typeflag == b'K':
                    long_link = _decode(data)
                continue
            name = long_name or pax.get('path')
            if name is None:
                name = _decode(header[0:100])
                if header[257:263] == b'ustar\x00':
                    prefix = _decode(header[345:500])
                    if prefix:
                        name = prefix + '/' + name
            link = long_link or pax.get('linkpath') or _decode(header[157:257])
            if 'size' in pax:
                try:
                    size = int(pax['size'])
                except ValueError:
                    pass
            pax = {}
            long_name = long_link = None
            if not self._member(name, typeflag, size, link):
                return

    def _member(self, raw_name, typeflag, size, link):
        kind = _TYPES.get(typeflag, 'other')
        name = _clean(raw_name)
        self.current = name
        reason = _escapes(name)
        if reason:
            self._problem('member %s: unsafe name (%s)' % (raw_name, reason))
        member = _Member(name, kind, size)
        if kind == 'symlink':
            if link.startswith('/'):
                self._problem('member %s: symlink to an absolute path %s' % (raw_name, link))
            else:
                target = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
                if target == '..' or target.startswith('../'):
                    self._problem('member %s: symlink %s points outside the archive' % (raw_name, link))
                else:
                    member.link = target
        elif kind == 'hardlink':
            reason = _escapes(link)
            if reason:
                self._problem('member %s: hardlink to %s points outside the archive (%s)' % (raw_name, link, reason))
            else:
                member.link = posixpath.normpath(_clean(link))
        elif kind == 'other':
            self._problem('member %s: unexpected tar entry type %r in an image archive'
                          % (raw_name, typeflag.decode('latin-1')))
        if kind == 'file':
            hashed = self.hash_limit is None or size <= self.hash_limit
            collector = _Collector(size <= JSON_MEMBER_MAX and self.kept_bytes + size <= JSON_TOTAL_MAX, hashed)
            got = self.stream.feed(size, collector)
            if got < size:
                self._problem('archive ends inside member %s after %d of %d bytes (the file is truncated)'
                              % (raw_name, got, size))
                return False
            member.sha256 = collector.digest.hexdigest() if hashed else None
            member.head = collector.head
            if collector.kept is not None and bytes(collector.kept[:1]).strip() in (b'{', b'['):
                member.data = bytes(collector.kept)
                self.kept_bytes += size
        else:
            got = self.stream.feed(size, None)
            if got < size:
                self._problem('archive ends inside member %s (the file is truncated)' % raw_name)
                return False
        if self.stream.feed(_pad(size), None) < _pad(size):
            self._problem('archive ends in the padding of member %s (the file is truncated)' % raw_name)
            return False
        if name:
            self.members[name] = member
        self.last = name or raw_name
        self.current = None
        return True


class _Truncated(Exception):
    def __init__(self, got, size):
        super(_Truncated, self).__init__('truncated')
        self.got = got
        self.size = size


# ---------------------------------------------------------------------------
# Reading: what the members say


class ArchivedImage(object):
    """One image found in an archive."""

    def __init__(self, config_digest, config):
        rootfs = config.get('rootfs') or {}
        self.config_digest = config_digest
        self.repo_tags = []
        self.manifest_digest = None
        self.diff_ids = list(rootfs.get('diff_ids') or [])
        self.os = config.get('os')
        self.architecture = config.get('architecture')
        self.variant = config.get('variant')
        self.created = config.get('created')
        self.fingerprint = fingerprint_from_config(config)
        self.layers_bytes = 0

    def add_tags(self, tags):
        for tag in tags:
            if tag and tag not in self.repo_tags:
                self.repo_tags.append(tag)

    def to_dict(self):
        return dict(
            config_digest=self.config_digest, repo_tags=list(self.repo_tags), manifest_digest=self.manifest_digest,
            diff_ids=list(self.diff_ids), os=self.os, architecture=self.architecture, variant=self.variant,
            created=self.created, fingerprint=self.fingerprint, layers_bytes=self.layers_bytes,
        )


class ArchiveReport(object):
    """What read_archive found: the file's hash and size, its format, its images, and every problem."""

    def __init__(self, path):
        self.path = path
        self.sha256 = None
        self.bytes = 0
        self.compression = None
        self.format = None
        self.images = []
        self.problems = []

    @property
    def ok(self):
        return not self.problems

    def to_dict(self):
        return dict(
            path=self.path, sha256=self.sha256, bytes=self.bytes, compression=self.compression, format=self.format,
            images=[image.to_dict() for image in self.images], problems=list(self.problems), ok=self.ok,
        )


def _familiar(name):
    """'docker.io/library/alpine:3' -> 'alpine:3', as docker images shows it; None for digests."""
    if not name or '@' in name or name.startswith('sha256:'):
        return None
    for prefix in ('docker.io/library/', 'docker.io/'):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _tags_from_annotations(annotations):
    annotations = annotations or {}
    tag = _familiar(annotations.get('io.containerd.image.name'))
    if tag:
        return [tag]
    ref = annotations.get('org.opencontainers.image.ref.name')
    if ref and (':' in ref.split('/')[-1]):  # a full reference, not just a tag
        tag = _familiar(ref)
        return [tag] if tag else []
    return []


class _Inspector(object):
    """Checks the manifests and indexes of a scanned archive and collects its images."""

    def __init__(self, members, problems):
        self.members = members
        self.problems = problems
        self.images = {}
        self.order = []

    def problem(self, text):
        if text not in self.problems:
            self.problems.append(text)

    def resolve(self, name):
        """The regular-file member a path leads to (following links inside the archive), or None."""
        seen = set()
        member = self.members.get(_clean(name))
        while member is not None and member.kind in ('symlink', 'hardlink'):
            if member.name in seen or member.link is None:
                return None
            seen.add(member.name)
            member = self.members.get(member.link)
        if member is None or member.kind != 'file':
            return None
        return member

    def json_member(self, name, what):
        member = self.resolve(name)
        if member is None:
            self.problem('%s: %s is not in the archive' % (name, what))
            return None
        if member.data is None:
            self.problem('%s: %s is not a JSON document of at most %d bytes' % (name, what, JSON_MEMBER_MAX))
            return None
        try:
            return json.loads(member.data.decode('utf-8'))
        except ValueError as exc:
            self.problem('%s: %s is not valid JSON (%s)' % (name, what, exc))
            return None

    def check_blobs(self):
        for name, member in sorted(self.members.items()):
            parts = name.split('/')
            if len(parts) != 3 or parts[0] != 'blobs' or member.kind != 'file':
                continue
            if parts[1] == 'sha256' and member.sha256 is not None and member.sha256 != parts[2]:
                self.problem('%s: content hashes to sha256:%s, not to the digest in its name (the blob is damaged)'
                             % (name, member.sha256))

    def image_for(self, config_name, where):
        """Check the config member; return (ArchivedImage or None, its JSON)."""
        reason = _escapes(config_name)
        if reason:
            self.problem('%s names config %s, outside the archive (%s)' % (where, config_name, reason))
            return None
        config = self.json_member(config_name, 'image config named by %s' % where)
        if not isinstance(config, dict):
            if config is not None:
                self.problem('%s: image config is not a JSON object' % config_name)
            return None
        member = self.resolve(config_name)
        digest = 'sha256:' + member.sha256
        base = posixpath.basename(config_name)
        stem = base[:-5] if base.endswith('.json') else base
        if _HEX64.match(stem) and stem != member.sha256:
            self.problem('%s: config content hashes to %s, not to the digest in its name (the config was edited '
                         'or damaged)' % (config_name, digest))
        image = self.images.get(digest)
        if image is None:
            image = ArchivedImage(digest, config)
            self.images[digest] = image
            self.order.append(digest)
        return image

    def check_layer(self, image, index, name, member, tar_layer, where):
        image.layers_bytes += member.size
        if not tar_layer:
            return
        if any(member.head.startswith(magic) for magic, dummy in _MAGIC + _UNSUPPORTED_MAGIC):
            return  # compressed layer: the blob digest check covers it
        if index >= len(image.diff_ids) or member.sha256 is None:
            return
        if 'sha256:' + member.sha256 != image.diff_ids[index]:
            self.problem('%s: layer %d of %s hashes to sha256:%s, not to the config\'s rootfs.diff_ids entry %s '
                         '(the layer is damaged)' % (name, index + 1, where, member.sha256, image.diff_ids[index]))

    def docker_manifest(self):
        manifest = self.json_member('manifest.json', 'the docker-archive manifest')
        if manifest is None:
            return
        if not isinstance(manifest, list):
            self.problem('manifest.json: expected a list of images')
            return
        for number, entry in enumerate(manifest):
            where = 'manifest.json entry %d' % (number + 1)
            if not isinstance(entry, dict) or not isinstance(entry.get('Config'), str):
                self.problem('%s: no Config' % where)
                continue
            image = self.image_for(entry['Config'], where)
            if image is None:
                continue
            image.add_tags(entry.get('RepoTags') or [])
            layers = entry.get('Layers') or []
            if len(layers) != len(image.diff_ids):
                self.problem('%s: names %d layers, its config %s lists %d diff_ids'
                             % (where, len(layers), entry['Config'], len(image.diff_ids)))
            image.layers_bytes = 0
            for index, name in enumerate(layers):
                reason = _escapes(name)
                if reason:
                    self.problem('%s names layer %s, outside the archive (%s)' % (where, name, reason))
                    continue
                member = self.resolve(name)
                if member is None:
                    self.problem('%s: layer %d named by %s is not in the archive' % (name, index + 1, where))
                    continue
                self.check_layer(image, index, name, member, True, where)

    def blob_name(self, descriptor, where):
        digest = descriptor.get('digest') if isinstance(descriptor, dict) else None
        if not isinstance(digest, str) or not digest.startswith('sha256:') or not _HEX64.match(digest[7:]):
            self.problem('%s: descriptor without a valid sha256 digest: %r' % (where, digest))
            return None
        return 'blobs/sha256/' + digest[7:]

    def descriptor(self, descriptor, where, depth, optional=False):
        """Follow an index.json / image index descriptor to its manifests."""
        name = self.blob_name(descriptor, where)
        if name is None:
            return
        member = self.resolve(name)
        if member is None:
            if not optional:
                self.problem('%s: %s named by %s is not in the archive' % (name, descriptor.get('mediaType'), where))
            return
        if isinstance(descriptor.get('size'), int) and descriptor['size'] != member.size:
            self.problem('%s: %d bytes, %s says %d' % (name, member.size, where, descriptor['size']))
        annotations = descriptor.get('annotations') or {}
        if annotations.get('vnd.docker.reference.type') == 'attestation-manifest':
            return
        document = self.json_member(name, 'the %s named by %s' % (descriptor.get('mediaType') or 'document', where))
        if not isinstance(document, dict):
            return
        media_type = document.get('mediaType') or descriptor.get('mediaType')
        if media_type in _INDEX_TYPES or 'manifests' in document:
            if depth > 8:
                self.problem('%s: image indexes nested too deep' % name)
                return
            children = [child for child in document.get('manifests') or [] if isinstance(child, dict)]
            # An index may list platforms whose content was not saved; it needs at least one.
            present = [child for child in children if self.resolve(self.blob_name(child, name) or '')]
            if children and not present:
                self.problem('%s: none of the %d manifests this index names is in the archive' % (name, len(children)))
            for child in children:
                self.descriptor(child, name, depth + 1, optional=True)
            tags = _tags_from_annotations(annotations)
            if tags:
                for child in present:
                    self._tag_manifest(child, tags)
            return
        self.image_manifest(document, name, descriptor)

    def _tag_manifest(self, child, tags):
        digest = child.get('digest')
        for image in self.images.values():
            if image.manifest_digest == digest:
                image.add_tags(tags)

    def image_manifest(self, manifest, name, descriptor):
        config = manifest.get('config')
        config_name = self.blob_name(config, name + ' config')
        if config_name is None:
            return
        if self.resolve(config_name) is None:
            self.problem('%s: image config named by %s is not in the archive' % (config_name, name))
            return
        image = self.image_for(config_name, name)
        if image is None:
            return
        if image.manifest_digest is None:
            image.manifest_digest = descriptor.get('digest')
        image.add_tags(_tags_from_annotations(descriptor.get('annotations')))
        layers = [layer for layer in manifest.get('layers') or [] if isinstance(layer, dict)]
        if len(layers) != len(image.diff_ids):
            self.problem('%s: names %d layers, its config lists %d diff_ids' % (name, len(layers), len(image.diff_ids)))
        image.layers_bytes = 0
        for index, layer in enumerate(layers):
            layer_name = self.blob_name(layer, name + ' layer %d' % (index + 1))
            if layer_name is None:
                continue
            member = self.resolve(layer_name)
            if member is None:
                self.problem('%s: layer %d named by %s is not in the archive' % (layer_name, index + 1, name))
                continue
            if isinstance(layer.get('size'), int) and layer['size'] != member.size:
                self.problem('%s: %d bytes, %s says %d' % (layer_name, member.size, name, layer['size']))
            self.check_layer(image, index, layer_name, member, layer.get('mediaType') in _TAR_LAYER_TYPES, name)

    def oci_index(self):
        index = self.json_member('index.json', 'the OCI index')
        if not isinstance(index, dict):
            if index is not None:
                self.problem('index.json: expected a JSON object')
            return
        for number, descriptor in enumerate(index.get('manifests') or []):
            self.descriptor(descriptor, 'index.json entry %d' % (number + 1), 0)


def _archive_format(members):
    docker = 'manifest.json' in members
    oci = 'index.json' in members
    if docker and oci:
        return 'oci+docker'
    if oci:
        return 'oci'
    if docker:
        return 'docker-archive'
    return None


def read_archive(path, expected_sha256=None, chunk_size=DEFAULT_CHUNK_SIZE, deep=True):
    """Read an archive in one sequential pass and check it; return an ArchiveReport.

    I/O errors (missing file, read error, zstd not installed) raise
    ArchiveError. Everything wrong with the content is a problem in the report.
    With ``deep=False`` and an ``expected_sha256``, layer blobs are not hashed
    one by one: the file's sha256 matching the record made when the archive
    was written already proves they are unchanged (the structure, manifests and
    configs are still checked). Without a record every member is hashed.
    """
    report = ArchiveReport(path)
    report.compression = _detect_file_compression(path)
    decoded = _Decoded(path, report.compression, chunk_size)
    hash_limit = JSON_MEMBER_MAX if (expected_sha256 and not deep) else None
    try:
        scan = _TarScan(_ByteStream(decoded.chunks), hash_limit=hash_limit)
        scan.run()
        report.sha256 = decoded.finish()
    except BaseException:
        decoded.close()
        raise
    report.bytes = decoded.raw.size
    _check_members(report, scan)
    if expected_sha256:
        expected = expected_sha256.lower()
        if expected.startswith('sha256:'):
            expected = expected[7:]
        if expected != report.sha256:
            report.problems.insert(0, 'sha256 of the file is %s, the record says %s (the file changed or is damaged)'
                                   % (report.sha256, expected))
    return report


def _check_members(report, scan):
    """Fill a report's format, images and problems from a finished tar scan."""
    report.problems.extend(scan.problems)
    members = scan.members
    report.format = _archive_format(members)
    inspector = _Inspector(members, report.problems)
    inspector.check_blobs()
    if report.format is None:
        inspector.problem('neither manifest.json nor index.json is in the archive: not a docker save archive')
    if 'manifest.json' in members:
        inspector.docker_manifest()
    if 'index.json' in members:
        inspector.oci_index()
    report.images = [inspector.images[digest] for digest in inspector.order]
    if report.format and not report.images and report.ok:
        inspector.problem('%s: names no image' % ('manifest.json' if 'manifest.json' in members else 'index.json'))


@contextmanager
def open_tar_stream(path, chunk_size=DEFAULT_CHUNK_SIZE):
    """Yield a file object giving the decompressed tar bytes of an archive (for engines that cannot decompress).

    Uses ``zstd -dc`` for zstd and the gzip module for gzip. A decompressor
    failure after the caller read everything raises ArchiveError.
    """
    compression = _detect_file_compression(path)
    if compression == 'none':
        with open(path, 'rb') as handle:
            yield handle
        return
    if compression == 'gzip':
        try:
            with gzip.open(path, 'rb') as handle:
                yield handle
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ArchiveError('gzip data is damaged or truncated (%s)' % (exc or type(exc).__name__), path=path)
        return
    zstd = shutil.which('zstd')
    if not zstd:
        raise _zstd_missing(path)
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen([zstd, '-q', '-d', '-c', '--', path], stdout=subprocess.PIPE, stderr=errors,
                                bufsize=chunk_size, close_fds=True)
        finished = False
        try:
            yield proc.stdout
            finished = True
        finally:
            if not finished and proc.poll() is None:
                proc.kill()
            proc.stdout.close()
            code = proc.wait()
        if code != 0:
            errors.seek(0)
            text = errors.read().decode('utf-8', 'replace').strip()
            raise ArchiveError('zstd -d failed with code %d: %s' % (code, text or 'no message'), path=path)

"""The benchmark's own sample images on a lab engine (private to tests/lab/bench.py).

A set of size S MB is three images whose `docker save` archives add up to about
S MB, so S is also roughly what each backup writes to the stick:

  pibackup-bench/base:sS  `docker import` of one layer: 2/3 random bytes
                          (incompressible), 1/3 hex text (compresses about 2x)
  pibackup-bench/app:sS   `docker build` FROM base + COPY of a small hex-text
                          layer: shares the base layer (its archive holds it too)
  pibackup-bench/text:sS  `docker import` of hex text only (compressible)

Archive sizes: base 0.30 S, app 0.35 S (base layer + 0.05 S), text 0.35 S.
Every image carries the label pibackup.lab=bench; nothing is pulled (no
registry): the bytes come from a seeded PRNG and are streamed into
`docker import -` and `docker build -` without temporary files. Images are
created only when missing (re-creating changes their identity), and removal
only ever names these tags.
"""
import io
import os
import random
import subprocess
import tarfile
import tempfile

LABEL = 'pibackup.lab=bench'
REPO = 'pibackup-bench'
MIB = 1024 * 1024
CHUNK = 4 * MIB


class Engine(object):
    """A lab engine as the benchmark talks to it: its own CLI and socket."""

    def __init__(self, name, cli, host):
        self.name = name
        self.cli = cli
        self.host = host

    def argv(self, *args):
        return [self.cli, '-H', self.host] + list(args)


def docker(engine, *args):
    return engine.argv(*args)


def run(argv, **kwargs):
    """Run argv, raise with the command and its stderr when it fails."""
    kwargs.setdefault('stdout', subprocess.PIPE)
    kwargs.setdefault('stderr', subprocess.PIPE)
    proc = subprocess.run(argv, check=False, **kwargs)
    if proc.returncode != 0:
        err = proc.stderr.decode('utf-8', 'replace') if isinstance(proc.stderr, bytes) else proc.stderr
        raise RuntimeError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode, (err or '').strip()))
    return proc


class PatternReader(io.RawIOBase):
    """A read-only stream of `size` deterministic bytes: random or hex text."""

    def __init__(self, size, seed, kind):
        super(PatternReader, self).__init__()
        self.left = size
        self.rng = random.Random(seed)
        self.kind = kind
        self.buf = b''

    def readable(self):
        return True

    def _more(self):
        if self.kind == 'random':
            return self.rng.randbytes(CHUNK)
        # Hex text of random bytes: 4 bits of entropy per byte, so gzip and
        # zstd halve it roughly, like typical binaries and libraries.
        return self.rng.randbytes(CHUNK // 2).hex().encode('ascii')

    def readinto(self, target):
        if self.left <= 0:
            return 0
        if not self.buf:
            self.buf = self._more()
        count = min(len(target), len(self.buf), self.left)
        target[:count] = self.buf[:count]
        self.buf = self.buf[count:]
        self.left -= count
        return count


def _add_stream(tar, name, size, seed, kind):
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 1700000000
    tar.addfile(info, io.BufferedReader(PatternReader(size, seed, kind), CHUNK))


def _add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 1700000000
    tar.addfile(info, io.BytesIO(data))


def _add_dir(tar, name):
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    info.mtime = 1700000000
    tar.addfile(info)


def _stream_tar_into(argv, fill, env=None):
    """Start argv reading a tar from stdin and write the tar that fill() makes."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env)
        try:
            with tarfile.open(fileobj=proc.stdin, mode='w|', format=tarfile.PAX_FORMAT) as tar:
                fill(tar)
        except BrokenPipeError:
            pass
        finally:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
        proc.wait()
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise RuntimeError('%s failed (rc=%d): %s' % (' '.join(argv), proc.returncode,
                                                          err.read().decode('utf-8', 'replace').strip()))
        return out.read()


class BenchSet(object):
    """The three images of one set size, on one engine."""

    def __init__(self, engine, size_mb):
        self.engine = engine
        self.size_mb = int(size_mb)
        tag = 's%d' % self.size_mb
        self.base = '%s/base:%s' % (REPO, tag)
        self.app = '%s/app:%s' % (REPO, tag)
        self.text = '%s/text:%s' % (REPO, tag)

    @property
    def refs(self):
        return [self.base, self.app, self.text]

    def _mb(self, fraction):
        return int(self.size_mb * fraction * 1000 * 1000)

    def present(self):
        """{ref: image id} of the set's images the engine has."""
        found = {}
        for ref in self.refs:
            proc = subprocess.run(docker(self.engine, 'image', 'inspect', '--format', '{{.Id}}', ref),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
            if proc.returncode == 0:
                found[ref] = proc.stdout.decode().strip()
        return found

    def ensure(self, log=print):
        """Create the images that are missing; return the list of refs created."""
        have = self.present()
        created = []
        if self.base not in have:
            # The app image must share THIS base layer: rebuild it too.
            if self.app in have:
                self.remove_refs([self.app])
                del have[self.app]
            log('creating %s (%d MB)' % (self.base, self._mb(0.30) // 10 ** 6))
            self._import(self.base, [('bench/random.bin', self._mb(0.20), 'random'),
                                     ('bench/text.hex', self._mb(0.10), 'hex')], seed=1)
            created.append(self.base)
        if self.app not in have:
            log('creating %s (FROM %s + %d MB)' % (self.app, self.base, self._mb(0.05) // 10 ** 6))
            self._build_app()
            created.append(self.app)
        if self.text not in have:
            log('creating %s (%d MB)' % (self.text, self._mb(0.35) // 10 ** 6))
            self._import(self.text, [('bench/text.hex', self._mb(0.35), 'hex')], seed=3)
            created.append(self.text)
        return created

    def _import(self, ref, files, seed):
        def fill(tar):
            _add_dir(tar, 'bench')
            for index, (name, size, kind) in enumerate(files):
                _add_stream(tar, name, size, seed * 100 + index + self.size_mb, kind)
        _stream_tar_into(docker(self.engine, 'import', '--change', 'LABEL ' + LABEL,
                                '--change', 'CMD ["/bench/none"]', '-', ref), fill)

    def _build_app(self):
        dockerfile = ('FROM %s\nLABEL %s\nCOPY extra.hex /app/extra.hex\n' % (self.base, LABEL)).encode()

        def fill(tar):
            _add_bytes(tar, 'Dockerfile', dockerfile)
            _add_stream(tar, 'extra.hex', self._mb(0.05), 200 + self.size_mb, 'hex')
        env = dict(os.environ, DOCKER_BUILDKIT='0')
        _stream_tar_into(docker(self.engine, 'build', '--network', 'none', '--rm', '--force-rm',
                                '-q', '-t', self.app, '-'), fill, env=env)

    def remove_refs(self, refs):
        """Remove the given refs of this set (only ours), children before parents."""
        order = [ref for ref in (self.app, self.text, self.base) if ref in refs]
        for ref in order:
            proc = subprocess.run(docker(self.engine, 'image', 'inspect', '--format',
                                         '{{index .Config.Labels "pibackup.lab"}}', ref),
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=False)
            if proc.returncode != 0:
                continue
            if proc.stdout.decode().strip() != 'bench':
                raise RuntimeError('%s exists without the label %s: not ours, left alone' % (ref, LABEL))
            run(docker(self.engine, 'rmi', ref))

    def remove(self):
        self.remove_refs(self.refs)


def all_bench_refs(engine):
    """Every tag on the engine that belongs to the benchmark (repo + label)."""
    proc = run(docker(engine, 'images', '--filter', 'label=' + LABEL,
                      '--format', '{{.Repository}}:{{.Tag}}'))
    return [line for line in proc.stdout.decode().split()
            if line.startswith(REPO + '/') and not line.endswith(':<none>')]


def remove_all(engine, log=print):
    """--cleanup: remove every benchmark image (derived images first)."""
    refs = all_bench_refs(engine)
    for first in (True, False):
        for ref in refs:
            if ('/app:' in ref) == first:
                log('removing %s' % ref)
                run(docker(engine, 'rmi', ref))
    return refs

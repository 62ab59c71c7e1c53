# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""The live mount table and the live options of a mount.

``/proc/self/mountinfo`` is the truth (never fstab). Kernel exfat/vfat mounts
show uid/gid/fmask/dmask in their super options; FUSE mounts
(``mount.exfat-fuse``: fstype ``fuseblk``; ``fusefat``: fstype
``fuse.fusefat``) only show FUSE's own options, so their uid/gid/masks are read
from the command line of the daemon serving the mount and from the owner and
mode of the mount's root directory.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import errno
import os
import re
import stat


MOUNTINFO = '/proc/self/mountinfo'
PROC = '/proc'

# argv[0] base names of the FUSE daemons that serve exFAT and FAT sticks.
FUSE_DAEMONS = ('mount.exfat-fuse', 'mount.exfat', 'exfat-fuse', 'fusefat')
FUSE_FSTYPES = ('fuseblk', 'fuse.fusefat', 'fuse.exfat', 'fuse')

_OCTAL_ESCAPE = re.compile(r'\\([0-7]{3})')


def unescape(field):
    """Undo the kernel's octal escapes in mountinfo fields (``\\040`` is a space)."""
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


class MountEntry(object):
    """One line of /proc/self/mountinfo."""

    __slots__ = ('mount_id', 'parent_id', 'major_minor', 'root', 'mount_point',
                 'mount_options', 'fstype', 'source', 'super_options')

    def __init__(self, mount_id, parent_id, major_minor, root, mount_point,
                 mount_options, fstype, source, super_options):
        self.mount_id = mount_id
        self.parent_id = parent_id
        self.major_minor = major_minor
        self.root = root
        self.mount_point = mount_point
        self.mount_options = mount_options
        self.fstype = fstype
        self.source = source
        self.super_options = super_options

    @property
    def is_fuse(self):
        return self.fstype == 'fuse' or self.fstype.startswith('fuse.') or self.fstype == 'fuseblk'

    @property
    def read_only(self):
        return 'ro' in self.mount_options or 'ro' in self.super_options

    def __repr__(self):
        return 'MountEntry(%s on %s type %s)' % (self.source, self.mount_point, self.fstype)


def parse_line(line):
    """Parse one mountinfo line; return a MountEntry or None for a malformed line."""
    fields = line.split()
    try:
        sep = fields.index('-', 6)
    except ValueError:
        return None
    if len(fields) < sep + 3:
        return None
    return MountEntry(
        mount_id=int(fields[0]),
        parent_id=int(fields[1]),
        major_minor=fields[2],
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        mount_options=fields[5].split(','),
        fstype=fields[sep + 1],
        source=unescape(fields[sep + 2]),
        super_options=fields[sep + 3].split(',') if len(fields) > sep + 3 else [],
    )


def parse_mountinfo(text):
    """Parse the whole mountinfo text into a list of MountEntry, in table order."""
    entries = []
    for line in text.splitlines():
        entry = parse_line(line)
        if entry is not None:
            entries.append(entry)
    return entries


def read_mountinfo(path=MOUNTINFO):
    with open(path) as handle:
        return parse_mountinfo(handle.read())


def top_mount_at(entries, mount_point):
    """The entry that is visible at mount_point (the last one mounted there), or None."""
    found = None
    for entry in entries:
        if entry.mount_point == mount_point:
            found = entry
    return found


def mount_holding(entries, path):
    """The entry of the mount that holds path (the longest mount point above it; of mounts
    stacked on one point, the last), or None."""
    real = os.path.realpath(path)
    best = None
    for entry in entries:
        point = entry.mount_point.rstrip('/') or '/'
        if real == point or real.startswith(point.rstrip('/') + '/') or point == '/':
            if best is None or len(point) >= len(best.mount_point.rstrip('/') or '/'):
                best = entry
    return best


def is_alive(mount_point):
    """False when the mount answers ENOTCONN (a FUSE mount whose daemon died)."""
    try:
        os.stat(mount_point)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EIO):
            return False
        raise
    return True


def read_cmdline(pid, proc=PROC):
    """argv of a process as a list (empty elements dropped), or None when it is gone."""
    try:
        with open(os.path.join(proc, str(pid), 'cmdline'), 'rb') as handle:
            raw = handle.read()
    except (IOError, OSError):
        return None
    return [part.decode('utf-8', 'replace') for part in raw.split(b'\0') if part]


def fuse_daemons(proc=PROC):
    """Running FUSE exFAT/FAT daemons as a list of (pid, argv)."""
    daemons = []
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        argv = read_cmdline(name, proc)
        if argv and os.path.basename(argv[0]) in FUSE_DAEMONS:
            daemons.append((int(name), argv))
    return daemons


def daemon_option_list(argv):
    """The ``-o`` options of a daemon's argv, flattened to one list."""
    options = []
    index = 1
    while index < len(argv):
        arg = argv[index]
        if arg == '-o' and index + 1 < len(argv):
            options.extend(o for o in argv[index + 1].split(',') if o)
            index += 2
            continue
        if arg.startswith('-o') and len(arg) > 2:
            options.extend(o for o in arg[2:].split(',') if o)
        index += 1
    return options


def daemon_for(daemons, device, mount_point):
    """The (pid, argv) of the daemon whose argv names both device and mount point."""
    for pid, argv in daemons:
        normalized = [os.path.normpath(a) if a.startswith('/') else a for a in argv[1:]]
        if device in normalized and mount_point in normalized:
            return pid, argv
    return None


def options_to_dict(option_list):
    """``['uid=0', 'ro']`` -> ``{'uid': '0', 'ro': True}``."""
    result = {}
    for option in option_list:
        key, sep, value = option.partition('=')
        result[key] = value if sep else True
    return result


def _octal(value):
    if value is None:
        return None
    try:
        return int(str(value), 8)
    except ValueError:
        return None


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def live_options(entry, daemon_argv=None, root_stat=None):
    """The options in effect on a mount, as a dict.

    Keys: ``uid``, ``gid`` (int), ``fmask``, ``dmask`` (int, the effective masks),
    ``umask`` (int or None when given explicitly), ``ro`` (bool), ``raw`` (list of
    strings: mount options, super options and the daemon's ``-o`` options), and
    ``source`` (where uid/gid/masks were read: ``super_options``, ``daemon`` or
    ``root_dir``).
    """
    raw = list(entry.mount_options) + [o for o in entry.super_options if o not in entry.mount_options]
    if entry.is_fuse:
        opts = options_to_dict(daemon_option_list(daemon_argv)) if daemon_argv else {}
        raw.extend(daemon_option_list(daemon_argv) if daemon_argv else [])
        source = 'daemon' if daemon_argv else 'root_dir'
    else:
        opts = options_to_dict(entry.super_options)
        source = 'super_options'
    umask = _octal(opts.get('umask'))
    fmask = _octal(opts.get('fmask'))
    dmask = _octal(opts.get('dmask'))
    if fmask is None:
        fmask = umask
    if dmask is None:
        dmask = umask
    uid = _int(opts.get('uid'))
    gid = _int(opts.get('gid'))
    if root_stat is not None:
        # The root directory shows what the driver really applies; it wins
        # over a daemon argv that omitted an option.
        if uid is None or entry.is_fuse:
            uid = root_stat.st_uid
        if gid is None or entry.is_fuse:
            gid = root_stat.st_gid
        if dmask is None:
            dmask = 0o777 & ~stat.S_IMODE(root_stat.st_mode)
    if fmask is None:
        fmask = dmask
    read_only = entry.read_only or opts.get('ro') is True
    if daemon_argv and os.path.basename(daemon_argv[0]) == 'fusefat':
        # fusefat mounts read-only unless asked for 'rw+' (shown as 'rw' once running).
        read_only = read_only or not ('rw' in opts or 'rw+' in opts)
    return dict(uid=uid, gid=gid, umask=umask, fmask=fmask, dmask=dmask,
                ro=read_only, raw=raw, source=source)

# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""ArchiveManager: the archived / loaded / verified state machine of docker_image_archive.

Every run reads the current state first (the engine's images, the folder's
archives, their metadata files and ``SHA256SUMS``), plans what differs, fails
on bad input before anything is touched, and acts only outside check mode.

Safety rules kept here:
- an archive is written under a temporary name, checked, and only then renamed
  over the older archive of the same image: a failed save never touches the
  last good archive;
- ``SHA256SUMS`` and metadata files are rewritten atomically after the archive;
- ``loaded`` checks every archive it is about to send (sha256 against the
  record, tar structure, blobs, config digest) before it sends any of them.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import datetime
import os
import time

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.pibackup.docker_usb.plugins.module_utils._common import ModuleFailure
from ansible_collections.pibackup.docker_usb.plugins.module_utils._archive import (
    SUFFIX,
    ArchiveError,
    ArchiveWriter,
    open_tar_stream,
    read_archive,
    remove_stale_partials,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._catalog import (
    CatalogError,
    Sums,
    read_metadata,
    write_metadata,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._engine import (
    DOCKER_IMPORT_ERROR,
    DockerException,
    Engine,
    EngineError,
    SizedReader,
    can_run,
    engine_tags,
    normalize_platform,
    platform_text,
    same_image,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._identity import (
    fingerprint_from_inspect,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._mountinfo import (
    mount_holding,
    read_mountinfo,
)
from ansible_collections.pibackup.docker_usb.plugins.module_utils._names import (
    METADATA_SUFFIX,
    archive_base,
    parse_reference,
)

JMESPATH_IMPORT_ERROR = None
try:
    import jmespath
except ImportError:
    import traceback
    JMESPATH_IMPORT_ERROR = traceback.format_exc()

# Archives found in a folder, also when made by hand with `docker save -o`.
ARCHIVE_SUFFIXES = ('.tar', '.tar.gz', '.tgz', '.tar.zst')
FAT_FILESYSTEMS = ('vfat', 'msdos', 'fat', 'fuse.fusefat')
FAT32_MAX_FILE_BYTES = 4 * 1024 ** 3 - 1
CHUNK = 1024 * 1024
ACTIONS = ('saved', 'unchanged', 'loaded', 'verified', 'failed')
ID_NOTE = ('this engine uses the containerd image store, which names an image by its manifest '
           'digest; the config digest is the identity kept across engines')


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None).isoformat() + 'Z'


def _drop_cache(path):
    """Ask the kernel to forget the file's cached pages so the next read comes from the stick."""
    if not hasattr(os, 'posix_fadvise'):
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _mount_fstype(folder):
    """fstype of the mount holding folder, from /proc/self/mountinfo (None when unknown)."""
    try:
        entries = read_mountinfo()
    except (IOError, OSError):
        return None
    entry = mount_holding(entries, folder)
    return entry.fstype if entry is not None else None


def _human(size):
    value = float(size)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if value < 1024 or unit == 'TiB':
            return '%.1f %s' % (value, unit) if unit != 'B' else '%d B' % size
        value /= 1024
    return '%d B' % size


class Entry(object):
    """One archive file in the folder, with its metadata and SHA256SUMS line when present."""

    def __init__(self, folder, name, metadata, recorded_sha):
        self.name = name
        self.path = os.path.join(folder, name)
        self.metadata = metadata
        self.recorded_sha = recorded_sha
        self.report = None

    @property
    def tags(self):
        if self.metadata is not None:
            return sorted(self.metadata.get('tags') or [])
        if self.report is not None and self.report.images:
            return sorted(self.report.images[0].repo_tags or [])
        return None


class ArchiveManager(object):

    def __init__(self, client):
        self.client = client
        self.params = client.params
        self.folder = os.path.abspath(self.params['path'])
        self.result = client.result
        self.result.update(images=[], summary=dict((action, 0) for action in ACTIONS))
        self._engine = None
        self._last_format = None

    # -- shared ---------------------------------------------------------------

    @property
    def engine(self):
        if self._engine is None:
            if DOCKER_IMPORT_ERROR:
                raise ModuleFailure(missing_required_lib('docker (the Docker SDK for Python)'),
                                    exception=DOCKER_IMPORT_ERROR)
            try:
                self._engine = Engine(self.params['docker_host'], self.params['timeout'],
                                      self.params['api_version'])
            except EngineError as exc:
                raise ModuleFailure(exc.msg, item=exc.item)
            self.result['engine'] = self._engine.describe()
        return self._engine

    def run(self):
        state = self.params['state']
        try:
            if state == 'archived':
                self.archived()
            elif state == 'loaded':
                self.loaded()
            else:
                self.verified()
        except EngineError as exc:
            raise ModuleFailure(exc.msg, item=exc.item)
        except DockerException as exc:
            raise ModuleFailure('the Docker engine at %s failed: %s' % (self.params['docker_host'], exc))
        except CatalogError as exc:
            raise ModuleFailure(exc.msg, item=exc.path)
        except ArchiveError as exc:
            raise ModuleFailure(str(exc), item=getattr(exc, 'path', None))

    def _add(self, entry):
        self.result['images'].append(entry)
        self.result['summary'][entry['action']] += 1

    def _check_folder(self, create):
        if os.path.exists(self.folder) and not os.path.isdir(self.folder):
            raise ModuleFailure('path %s is not a folder (it is a file); give the folder on the stick that '
                                'holds or shall hold the archives' % self.folder, item=self.folder)
        if not os.path.isdir(self.folder):
            if not create:
                raise ModuleFailure('archive folder %s does not exist; is the stick mounted?' % self.folder,
                                    item=self.folder)
            self.client.action('create folder %s' % self.folder)
            self.result['changed'] = True
            if not self.client.check_mode:
                old_umask = os.umask(0o022)  # 0755 folders whatever the caller's umask (readable by the stick's uid)
                try:
                    os.makedirs(self.folder, 0o755)
                except OSError as exc:
                    raise ModuleFailure('cannot create archive folder %s: %s' % (self.folder, exc.strerror),
                                        item=self.folder)
                finally:
                    os.umask(old_umask)
            return False
        return True

    def _inventory(self, folder_exists=True):
        """Archives in the folder (Entry list, sorted by name), metadata checked."""
        if not folder_exists:
            return [], Sums(self.folder)
        sums = Sums(self.folder)
        names = sorted(os.listdir(self.folder))
        metadata = {}
        for name in names:
            if name.endswith(METADATA_SUFFIX) and not name.startswith('.'):
                data = read_metadata(self.folder, name)
                metadata[data['file']] = data
        entries = []
        for name in names:
            if name.startswith('.') or not name.endswith(ARCHIVE_SUFFIXES):
                continue
            if not os.path.isfile(os.path.join(self.folder, name)):
                continue
            entries.append(Entry(self.folder, name, metadata.get(name), sums.get(name)))
        return entries, sums

    def _result_entry(self, action, tags, image_id, config_digest, file_name, size, sha256, seconds, **extra):
        entry = dict(action=action, tags=list(tags or []), image_id=image_id, config_digest=config_digest,
                     file=file_name, bytes=size, sha256=sha256, seconds=round(seconds, 3))
        entry.update(extra)
        return self._note_identity(entry)

    def _note_identity(self, entry):
        image_id, config_digest = entry.get('image_id'), entry.get('config_digest')
        if image_id and config_digest and image_id != config_digest:
            entry['identity_note'] = ID_NOTE if self._engine and self._engine.containerd_store else \
                'the image ID shown by this engine differs from the config digest'
        return entry

    def _entry_from_report(self, action, entry, image_id, seconds, **extra):
        """Result entry of an archive in the folder, from its check (or its metadata when not read)."""
        if entry.report is not None:
            fields = self._report_fields(entry)
        else:
            data = entry.metadata or {}
            fields = dict(file=entry.name, bytes=data.get('bytes'), sha256=entry.recorded_sha,
                          compression=data.get('compression'), checksum_recorded=True,
                          config_digest=data.get('config_digest'))
        result = dict(action=action, tags=list(entry.tags or []), image_id=image_id, seconds=round(seconds, 3))
        result.update(fields)
        result.update(extra)
        return self._note_identity(result)

    # -- archived -------------------------------------------------------------

    def _resolve_targets(self):
        """Images to archive: [(inspect, tags, by_id)], one per image, failing on bad input first."""
        wanted = {}
        order = []

        def add(inspect, by_id):
            image_id = inspect['Id']
            if image_id not in wanted:
                order.append(image_id)
                wanted[image_id] = (inspect, engine_tags(inspect), by_id)

        items = self.params['images'] or []
        refs = []
        for item in items:
            try:
                refs.append((item, parse_reference(item)))
            except ValueError as exc:
                raise ModuleFailure(str(exc), item=item)
        for item, ref in refs:
            inspect = self.engine.inspect(ref.text)
            if inspect is None:
                raise ModuleFailure('image %s not found on the engine at %s; `docker images` lists what it has'
                                    % (item, self.params['docker_host']), item=item)
            add(inspect, by_id=ref.is_id and not engine_tags(inspect))
        if self.params['select']:
            for inspect in self._select(self.engine.list_images()):
                add(inspect, by_id=not engine_tags(inspect))
        if not items and not self.params['select']:
            for inspect in self.engine.list_images():
                if engine_tags(inspect):
                    add(inspect, by_id=False)
        return [wanted[image_id] for image_id in order]

    def _select(self, inspects):
        if JMESPATH_IMPORT_ERROR:
            raise ModuleFailure(missing_required_lib('jmespath'), exception=JMESPATH_IMPORT_ERROR)
        expression = self.params['select']
        try:
            chosen = jmespath.search(expression, inspects)
        except jmespath.exceptions.JMESPathError as exc:
            raise ModuleFailure('select %r is not a valid JMESPath expression: %s' % (expression, exc),
                                item=expression)
        if chosen is None:
            return []
        if not isinstance(chosen, list):
            raise ModuleFailure('select %r must give a list of images (inspect dicts), IDs or tags; it gave %r'
                                % (expression, chosen), item=expression)
        by_key = {}
        for inspect in inspects:
            by_key[inspect['Id']] = inspect
            for tag in engine_tags(inspect):
                by_key[tag] = inspect
        result = []
        for item in chosen:
            key = item.get('Id') if isinstance(item, dict) else item
            if key not in by_key:
                raise ModuleFailure('select %r gave %r, which is not an image of the engine' % (expression, item),
                                    item=expression)
            result.append(by_key[key])
        return result

    def _fat_limit(self):
        limit = self.params['max_file_bytes']
        if _mount_fstype(self.folder) in FAT_FILESYSTEMS:
            limit = min(limit or FAT32_MAX_FILE_BYTES, FAT32_MAX_FILE_BYTES)
        return limit

    def _existing(self, entries, base):
        return [entry for entry in entries
                if any(entry.name == base + suffix for suffix in ARCHIVE_SUFFIXES)]

    def _unchanged(self, entry, inspect, tags):
        data = entry.metadata
        if data is None or entry.recorded_sha is None:
            return False
        try:
            size = os.path.getsize(entry.path)
        except OSError:
            return False
        return (data.get('sha256') == entry.recorded_sha and data.get('bytes') == size
                and sorted(data.get('tags') or []) == tags and same_image(inspect, data))

    def archived(self):
        # bad input is refused before anything is created, not even the folder
        targets = self._resolve_targets()
        exists = self._check_folder(create=True)
        entries, sums = self._inventory(exists)
        compression = self.params['compression']
        limit = self._fat_limit()
        plan = []
        for inspect, tags, by_id in targets:
            base = archive_base(tags, inspect['Id'])
            file_name = base + SUFFIX[compression]
            existing = self._existing(entries, base)
            same = [entry for entry in existing if entry.name == file_name]
            if same and not self.params['force'] and self._unchanged(same[0], inspect, tags):
                plan.append(('unchanged', inspect, tags, by_id, file_name, same[0], existing))
            else:
                plan.append(('saved', inspect, tags, by_id, file_name, same[0] if same else None, existing))
        # Refuse what cannot fit before anything is written.
        for action, inspect, tags, by_id, file_name, current, existing in plan:
            if action == 'saved':
                self._check_room_for_save(inspect, file_name, current, limit, compression)
        diff_before, diff_after = [], []
        archives = dict(added=[], replaced=[], unchanged=[], removed=[])
        for action, inspect, tags, by_id, file_name, current, existing in plan:
            for entry in existing:
                diff_before.append('%s  %s' % (entry.recorded_sha or '(no checksum recorded)', entry.name))
            if action == 'unchanged':
                data = current.metadata
                diff_after.append('%s  %s' % (current.recorded_sha, file_name))
                archives['unchanged'].append(file_name)
                self._add(self._result_entry(
                    'unchanged', tags, inspect['Id'], data.get('config_digest'), file_name, data.get('bytes'),
                    data.get('sha256'), 0.0, compression=data.get('compression'), by_id=by_id))
                continue
            archives['replaced' if existing else 'added'].append(file_name)
            for entry in existing:
                if entry.name != file_name:
                    archives['removed'].append(entry.name)
            self.result['changed'] = True
            what = 'replace' if existing else 'save'
            self.client.action('%s %s as %s' % (what, ', '.join(tags) or inspect['Id'], file_name))
            if self.client.check_mode:
                config_digest = None if self.engine.containerd_store else inspect['Id']
                diff_after.append('(new)  %s' % file_name)
                self._add(self._result_entry('saved', tags, inspect['Id'], config_digest, file_name, None, None,
                                             0.0, compression=compression, by_id=by_id))
                continue
            entry = self._save(inspect, tags, by_id, file_name, existing, sums, limit, compression)
            diff_after.append('%s  %s' % (entry['sha256'], file_name))
            self._add(entry)
        self.result['archives'] = archives
        if self.client.diff_mode:
            self.result['diff'] = dict(before='\n'.join(sorted(diff_before)) + '\n',
                                       after='\n'.join(sorted(diff_after)) + '\n')
        if not self.client.check_mode:
            removed = remove_stale_partials(self.folder)
            if removed:
                self.result['removed_partials'] = removed

    def _check_room_for_save(self, inspect, file_name, current, limit, compression):
        need = int(inspect.get('Size') or 0)
        item = ', '.join(engine_tags(inspect)) or inspect['Id']
        root, free = self.engine.data_root_room()
        if free is not None and need > free:
            raise ModuleFailure(
                'not enough room in the engine data root %s to save %s: docker save stages the image there '
                'first; %d bytes (%s) needed, %d bytes (%s) free' % (root, item, need, _human(need), free,
                                                                     _human(free)),
                item=item, path=root, bytes_needed=need, bytes_free=free)
        elif free is None:
            self.result.setdefault('notes', []).append(
                'the engine data root %s is not on this host: its free space was not checked' % root)
        if compression == 'none':
            if limit and need > limit:
                raise ModuleFailure(
                    'the archive of %s would be about %d bytes (%s), more than the %d bytes one file may have '
                    'on this stick (FAT32 allows 4 GiB - 1); format the stick as exFAT or use compression: '
                    'gzip or zstd' % (item, need, _human(need), limit), item=item, path=self.folder,
                    bytes_needed=need, max_file_bytes=limit)
            existing_folder = self.folder
            while not os.path.isdir(existing_folder):  # check mode: the folder is not made yet
                existing_folder = os.path.dirname(existing_folder)
            stats = os.statvfs(existing_folder)
            free = stats.f_bavail * stats.f_frsize
            # the older archive stays until the new one is complete
            if need > free:
                raise ModuleFailure(
                    'not enough room on the stick at %s for %s: %d bytes (%s) needed, %d bytes (%s) free'
                    % (self.folder, file_name, need, _human(need), free, _human(free)),
                    item=item, path=self.folder, bytes_needed=need, bytes_free=free)

    def _save(self, inspect, tags, by_id, file_name, existing, sums, limit, compression):
        item = ', '.join(tags) or inspect['Id']
        final = os.path.join(self.folder, file_name)
        names = tags if tags else [inspect['Id']]
        started = time.time()
        # verify=quick checks the tar stream while it is written (no second read);
        # verify=full reads the file back from the stick after dropping it from the cache.
        quick = self.params['verify'] != 'full'
        writer = ArchiveWriter(final, compression=compression, max_file_bytes=limit,
                               inspect='structure' if quick else False)
        checked = []

        def check(temp_path, sha256, report):
            # runs before the new archive replaces anything; a failure removes it
            checked.append(self._check_written(temp_path, sha256, inspect, tags, item, report if quick else None))

        try:
            for chunk in self.engine.save(names):
                writer.write(chunk)
            sha256, size = writer.commit(check)
        except ArchiveError as exc:
            writer.abort()
            raise ModuleFailure('saving %s failed: %s; the older archive, if any, was left as it was'
                                % (item, exc), item=item, images=self.result['images'])
        except (EngineError, DockerException, EnvironmentError) as exc:
            writer.abort()
            raise ModuleFailure('saving %s failed: %s; the older archive, if any, was left as it was'
                                % (item, getattr(exc, 'msg', exc)), item=item, images=self.result['images'])
        except BaseException:
            writer.abort()
            raise
        image = checked[0]
        seconds = time.time() - started
        manifest_digests = [image.manifest_digest] if image.manifest_digest else []
        record = dict(
            file=file_name, tags=tags, by_id=by_id, image_id=inspect['Id'],
            config_digest=image.config_digest, manifest_digests=manifest_digests,
            fingerprint=image.fingerprint, os=image.os, architecture=image.architecture,
            variant=image.variant, created=image.created, image_bytes=inspect.get('Size'),
            bytes=size, sha256=sha256, compression=compression, archive_format=self._last_format,
            engine=self.engine.describe(), saved_at=_now(),
        )
        write_metadata(self.folder, record)
        updates = {file_name: sha256}
        for entry in existing:
            if entry.name != file_name:
                # the same image saved before with another compression: the new archive replaces it
                for path in (entry.path, entry.path + METADATA_SUFFIX):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                updates[entry.name] = None
        sums.update(updates)
        return self._result_entry('saved', tags, inspect['Id'], image.config_digest, file_name, size, sha256,
                                  seconds, compression=compression, by_id=by_id)

    def _check_written(self, path, sha256, inspect, tags, item, report=None):
        """Check the new archive before it replaces anything; return its ArchivedImage.

        ``report`` is the check made while writing (verify=quick); without it the
        file is read back from the stick, past the kernel's cache (verify=full).
        """
        if report is None:
            _drop_cache(path)
            report = read_archive(path, expected_sha256=sha256)
        self._last_format = report.format
        problems = list(report.problems)
        if len(report.images) != 1:
            problems.append('the archive holds %d images, expected 1' % len(report.images))
        image = report.images[0] if report.images else None
        if image is not None:
            record = dict(config_digest=image.config_digest, fingerprint=image.fingerprint,
                          manifest_digests=[image.manifest_digest] if image.manifest_digest else [])
            if not same_image(inspect, record):
                problems.append('the archive holds config %s, not the image %s the engine has'
                                % (image.config_digest, inspect['Id']))
            if sorted(image.repo_tags or []) != tags:
                problems.append('the archive names tags %s, expected %s' % (sorted(image.repo_tags or []), tags))
        if problems:
            raise ModuleFailure('the archive written for %s failed its check: %s; it was removed and the older '
                                'archive, if any, was left as it was' % (item, '; '.join(problems)),
                                item=item, images=self.result['images'])
        return image

    # -- loaded and verified --------------------------------------------------

    def _select_entries(self, entries):
        items = self.params['images']
        if not items:
            return entries
        chosen = []
        by_name = dict((entry.name, entry) for entry in entries)
        for item in items:
            if item in by_name:
                found = [by_name[item]]
            else:
                try:
                    ref = parse_reference(item)
                except ValueError as exc:
                    raise ModuleFailure('%s; give an image reference or the file name of an archive in %s'
                                        % (exc, self.folder), item=item)
                found = [entry for entry in entries if self._entry_matches(entry, ref)]
            if not found:
                raise ModuleFailure('no archive in %s holds %s; archives there: %s'
                                    % (self.folder, item, ', '.join(sorted(by_name)) or 'none'), item=item)
            for entry in found:
                if entry not in chosen:
                    chosen.append(entry)
        return chosen

    def _entry_matches(self, entry, ref):
        if entry.metadata is None and entry.report is None:
            entry.report = read_archive(entry.path)
        if ref.is_id:
            ids = []
            if entry.metadata is not None:
                ids = [entry.metadata.get('image_id'), entry.metadata.get('config_digest')] + \
                    list(entry.metadata.get('manifest_digests') or [])
            elif entry.report.images:
                ids = [entry.report.images[0].config_digest, entry.report.images[0].manifest_digest]
            if any(i and i.startswith(ref.image_id) for i in ids):
                return True
        return ref.canonical in (entry.tags or [])

    def _check_entry(self, entry, deep=True):
        """Read and check one archive; return its problems (empty when ok).

        ``deep=False`` (before a load) trusts a matching recorded sha256 for the
        layers instead of hashing each again; the engine checks them on load too.
        """
        data = entry.metadata
        recorded = entry.recorded_sha or (data or {}).get('sha256')
        entry.report = read_archive(entry.path, expected_sha256=recorded, deep=deep)
        problems = list(entry.report.problems)
        if data is not None:
            if entry.recorded_sha and data.get('sha256') and data['sha256'] != entry.recorded_sha:
                problems.append('the metadata file records sha256 %s but SHA256SUMS records %s'
                                % (data['sha256'], entry.recorded_sha))
            if entry.recorded_sha is None:
                problems.append('SHA256SUMS has no line for %s (the metadata file records one)' % entry.name)
            image = entry.report.images[0] if entry.report.images else None
            if image is not None and data.get('config_digest') and image.config_digest != data['config_digest']:
                problems.append('the archive holds config %s but its metadata file records %s'
                                % (image.config_digest, data['config_digest']))
            if image is not None and sorted(image.repo_tags or []) != sorted(data.get('tags') or []):
                problems.append('the archive names tags %s but its metadata file records %s'
                                % (sorted(image.repo_tags or []), sorted(data.get('tags') or [])))
        if not entry.report.images and not problems:
            problems.append('the archive holds no image')
        return problems

    def _report_fields(self, entry):
        report = entry.report
        image = report.images[0] if report and report.images else None
        fields = dict(file=entry.name, bytes=report.bytes if report else None,
                      sha256=report.sha256 if report else None,
                      compression=report.compression if report else None,
                      checksum_recorded=bool(entry.recorded_sha or (entry.metadata or {}).get('sha256')))
        if not fields['checksum_recorded']:
            fields['note'] = 'no checksum had been recorded for this archive (made by hand?): ' \
                             'it was checked as far as its content allows'
        if image is not None:
            fields.update(config_digest=image.config_digest, tags=sorted(image.repo_tags or []),
                          platform=platform_text(image.os, image.architecture, image.variant))
        return fields

    def verified(self):
        self._check_folder(create=False)
        entries, sums = self._inventory()
        failed = []
        for entry in self._select_entries(entries):
            started = time.time()
            problems = self._check_entry(entry)
            action = 'failed' if problems else 'verified'
            self._add(self._entry_from_report(action, entry, (entry.metadata or {}).get('image_id'),
                                              time.time() - started, problems=problems))
            if problems:
                failed.append('%s: %s' % (entry.name, '; '.join(problems)))
        if failed:
            raise ModuleFailure('%d of %d archives in %s failed verification: %s'
                                % (len(failed), len(self.result['images']), self.folder, ' | '.join(failed)),
                                item=self.folder)

    def _find_loaded(self, record, tags):
        """The engine's inspect data of the archived image, or None."""
        candidates = []
        for key in [record.get('config_digest'), record.get('image_id')] + list(record.get('manifest_digests') or []):
            if key:
                candidates.append(key)
        candidates.extend(tags)
        for key in candidates:
            inspect = self.engine.inspect(key)
            if inspect is not None and same_image(inspect, record):
                return inspect
        if record.get('fingerprint'):
            for inspect in self.engine.list_images():
                if fingerprint_from_inspect(inspect) == record['fingerprint']:
                    return inspect
        return None

    def _engine_has(self, record, tags):
        """True when the engine has the image with every tag pointing at it."""
        if tags:
            for tag in tags:
                inspect = self.engine.inspect(tag)
                if inspect is None or not same_image(inspect, record):
                    return False
            return True
        return self._find_loaded(record, tags) is not None

    def _record_of(self, entry):
        if entry.metadata is not None:
            return entry.metadata, sorted(entry.metadata.get('tags') or [])
        image = entry.report.images[0]
        record = dict(config_digest=image.config_digest, fingerprint=image.fingerprint,
                      manifest_digests=[image.manifest_digest] if image.manifest_digest else [],
                      os=image.os, architecture=image.architecture, variant=image.variant)
        return record, sorted(image.repo_tags or [])

    def loaded(self):
        self._check_folder(create=False)
        entries, sums = self._inventory()
        chosen = self._select_entries(entries)
        engine = self.engine
        # 1. what is already there (metadata answers without reading the archive)
        plan = []
        for entry in chosen:
            if entry.metadata is not None:
                record, tags = self._record_of(entry)
                if not self.params['force'] and self._engine_has(record, tags):
                    plan.append(('unchanged', entry))
                    continue
            plan.append(('load', entry))
        # 2. check every archive to load before anything is sent
        failed = []
        for index, (action, entry) in enumerate(plan):
            if action != 'load':
                continue
            problems = self._check_entry(entry, deep=False)
            if problems:
                failed.append('%s: %s' % (entry.name, '; '.join(problems)))
                self._add(self._entry_from_report('failed', entry, None, 0.0, problems=problems))
                continue
            if entry.metadata is None:
                record, tags = self._record_of(entry)
                if not self.params['force'] and self._engine_has(record, tags):
                    plan[index] = ('unchanged', entry)
        if failed:
            raise ModuleFailure('%d archive(s) in %s failed their check, nothing was loaded: %s'
                                % (len(failed), self.folder, ' | '.join(failed)), item=failed[0].split(':')[0])
        # 3. platform and room
        engine_platform = engine.platform
        need = 0
        for action, entry in plan:
            if action != 'load':
                continue
            record, tags = self._record_of(entry)
            image = entry.report.images[0]
            image_platform = normalize_platform(image.os, image.architecture, image.variant)
            if not self.params['allow_platform_mismatch'] and not can_run(engine_platform, image_platform):
                raise ModuleFailure(
                    'archive %s holds an image for %s but the engine at %s runs %s; set allow_platform_mismatch: '
                    'true to load it anyway' % (entry.name, platform_text(*image_platform),
                                                self.params['docker_host'], platform_text(*engine_platform)),
                    item=entry.name)
            need += int(getattr(image, 'layers_bytes', 0) or 0)
        root, free = engine.data_root_room()
        if free is not None and need > free:
            raise ModuleFailure('not enough room in the engine data root %s to load: %d bytes (%s) needed, '
                                '%d bytes (%s) free' % (root, need, _human(need), free, _human(free)),
                                item=root, path=root, bytes_needed=need, bytes_free=free)
        # 4. load
        for action, entry in plan:
            record, tags = self._record_of(entry)
            config_digest = record.get('config_digest')
            if action == 'unchanged':
                inspect = self._find_loaded(record, tags)
                self._add(self._entry_from_report('unchanged', entry, inspect['Id'] if inspect else None, 0.0,
                                                  tags=tags))
                continue
            moved = []
            for tag in tags:
                holder = engine.inspect(tag)
                if holder is not None and not same_image(holder, record):
                    moved.append(dict(tag=tag, from_image=holder['Id'], from_tags=engine_tags(holder)))
            self.result['changed'] = True
            self.client.action('load %s from %s' % (', '.join(tags) or config_digest, entry.name))
            started = time.time()
            image_id = None
            if not self.client.check_mode:
                self._send(entry)
                inspect = self._find_loaded(record, tags)
                if inspect is None or not self._engine_has(record, tags):
                    raise ModuleFailure('the engine at %s accepted %s but does not show the image with its tags '
                                        'afterwards' % (self.params['docker_host'], entry.name), item=entry.name,
                                        images=self.result['images'])
                image_id = inspect['Id']
            extra = dict(tags_moved=moved) if moved else {}
            self._add(self._entry_from_report('loaded', entry, image_id, time.time() - started, tags=tags, **extra))
        if self.client.diff_mode:
            loads = [entry.name for action, entry in plan if action == 'load']
            self.result['diff'] = dict(before='', after=''.join('load %s\n' % name for name in loads))

    def _send(self, entry):
        """Stream one archive to the engine; zstd is decompressed here (older engines cannot read it)."""
        compression = entry.report.compression
        try:
            if compression == 'zstd':
                # one pass to learn the tar's length, one to send it (see Engine.load)
                size = 0
                with open_tar_stream(entry.path) as stream:
                    for chunk in iter(lambda: stream.read(CHUNK), b''):
                        size += len(chunk)
                with open_tar_stream(entry.path) as stream:
                    self.engine.load(SizedReader(stream, size))
            else:
                with open(entry.path, 'rb') as handle:
                    self.engine.load(handle)
        except EngineError as exc:
            raise ModuleFailure('loading %s failed: %s' % (entry.name, exc.msg), item=entry.name,
                                images=self.result['images'])

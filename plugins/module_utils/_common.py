# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# Private helper of pibackup.docker_usb: not a public API, may change without notice.
"""The one place where modules of this collection are built and fail.

Every module builds its AnsibleModule through ModuleClient so that the shared
engine options are declared once (ENGINE_ARGUMENT_SPEC, documented once in the
``pibackup.docker_usb.engine`` doc fragment) and every failure has one shape:
``msg`` says what failed, on which item, and what to do; ``item`` names the
item; the partial result collected so far is returned with it.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import copy

from ansible.module_utils.basic import AnsibleModule, env_fallback


ENGINE_ARGUMENT_SPEC = dict(
    docker_host=dict(
        type='str',
        default='unix:///var/run/docker.sock',
        aliases=['docker_url'],
        fallback=(env_fallback, ['DOCKER_HOST']),
    ),
    timeout=dict(
        type='int',
        default=3600,
        fallback=(env_fallback, ['DOCKER_TIMEOUT']),
    ),
    api_version=dict(
        type='str',
        default='auto',
        aliases=['docker_api_version'],
        fallback=(env_fallback, ['DOCKER_API_VERSION']),
    ),
)


def engine_argument_spec(argument_spec):
    """Return argument_spec merged with the shared engine options."""
    merged = copy.deepcopy(ENGINE_ARGUMENT_SPEC)
    merged.update(argument_spec)
    return merged


class ModuleFailure(Exception):
    """Raised by helpers below the module; ModuleClient turns it into fail_json.

    ``item`` names the image, archive, device or path the failure is about.
    """

    def __init__(self, msg, item=None, **details):
        super(ModuleFailure, self).__init__(msg)
        self.msg = msg
        self.item = item
        self.details = details


class ModuleClient(object):
    """Builds the AnsibleModule and owns the result and the way to fail."""

    def __init__(self, argument_spec, engine=False, **kwargs):
        spec = engine_argument_spec(argument_spec) if engine else argument_spec
        kwargs.setdefault('supports_check_mode', True)
        self.module = AnsibleModule(argument_spec=spec, **kwargs)
        self.params = self.module.params
        self.check_mode = self.module.check_mode
        self.diff_mode = self.module._diff
        self.result = dict(changed=False, actions=[])

    def action(self, text):
        """Record a human-readable line of what was (or, in check mode, would be) done."""
        self.result['actions'].append(text)

    def fail(self, msg, item=None, **details):
        result = dict(self.result)
        result.update(details)
        if item is not None:
            result['item'] = item
        self.module.fail_json(msg=msg, **result)

    def run(self, manager_factory):
        """Build the manager with this client, run it, exit with its result.

        ModuleFailure raised anywhere below becomes one fail_json.
        """
        try:
            manager = manager_factory(self)
            manager.run()
        except ModuleFailure as exc:
            self.fail(exc.msg, item=exc.item, **exc.details)
        self.module.exit_json(**self.result)

# -*- coding: utf-8 -*-
# Copyright: (c) 2026, pibackup maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by every module of pibackup.docker_usb that talks to a Docker engine."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type


class ModuleDocFragment(object):

    DOCUMENTATION = r'''
options:
  docker_host:
    description:
      - The Docker engine to talk to, as a URL.
      - C(unix:///var/run/docker.sock) is the local engine; C(tcp://HOST:2375) a remote one.
      - If not set, the value of the E(DOCKER_HOST) environment variable is used, else the local socket.
    type: str
    default: unix:///var/run/docker.sock
    aliases: [docker_url]
  timeout:
    description:
      - Seconds to wait for one reply of the engine.
      - Large by default because saving or loading an image of several GB to a slow USB stick
        keeps a single request open for minutes.
      - If not set, the value of the E(DOCKER_TIMEOUT) environment variable is used, else 3600.
    type: int
    default: 3600
  api_version:
    description:
      - The Docker Engine API version to speak, or C(auto) to use the engine's own.
      - If not set, the value of the E(DOCKER_API_VERSION) environment variable is used, else C(auto).
    type: str
    default: auto
    aliases: [docker_api_version]
requirements:
  - Docker SDK for Python 5.0.0 or newer (Debian and Raspberry Pi OS ship it as C(python3-docker))
'''

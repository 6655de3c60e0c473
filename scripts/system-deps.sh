#!/usr/bin/env bash
# Install what KubeRDE's demo and tests use beyond Python: OpenSSH (client and server) from
# Debian, useradd and setpriv (a root `kuberde up` gives each owner an OS account), iproute2's
# ip, nsenter and slirp4netns (and each owner a network namespace, with outbound access), and, with
# --tests, kubectl (for the runbook tests), a system python3 (test workloads run as other
# accounts, which may not reach ours), Node.js and the npm OIDC provider the authentication
# tests run against, and Chromium for the browser tests.
#
# It says what it will install before installing it, installs only what is missing, never
# upgrades a package that is already installed (openssh-server is pinned to the installed
# client's version; only when the archive no longer has that version does the client move up
# with the server, and the script says so), and never starts or enables a system service:
# KubeRDE runs its own sshd, so the one the Debian package would start is held back
# (policy-rc.d) and the boot enablement its first install performs is undone. apt-get runs when root (or with
# passwordless sudo); otherwise the script prints the command to run and carries on.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "system-deps: $*" >&2; }

installed() {
  if command -v dpkg-query >/dev/null 2>&1; then
    [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]
  else
    command -v "$2" >/dev/null 2>&1
  fi
}

tests=false
[ "${1:-}" = "--tests" ] && tests=true

packages=()
installed openssh-client ssh || packages+=(openssh-client)
if ! installed openssh-server sshd; then
  if installed openssh-client ssh && command -v dpkg-query >/dev/null 2>&1; then
    # The server must match the client exactly; without the pin apt would upgrade the client.
    packages+=("openssh-server=$(dpkg-query -W -f='${Version}' openssh-client)")
  else
    packages+=(openssh-server)
  fi
fi
installed passwd useradd || packages+=(passwd)
installed util-linux setpriv || packages+=(util-linux)
installed iproute2 ip || packages+=(iproute2)
installed slirp4netns slirp4netns || packages+=(slirp4netns)
if $tests; then
  [ -x /usr/bin/python3 ] || packages+=(python3)
  command -v node >/dev/null 2>&1 || packages+=(nodejs)
  command -v npm >/dev/null 2>&1 || packages+=(npm)
  # The runbook tests run the real kubectl (Debian's kubernetes-client where it is missing).
  command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
  # The browser tests drive Debian's headless Chromium with Playwright (never `playwright install`).
  installed chromium chromium || packages+=(chromium)
  installed chromium-driver chromedriver || packages+=(chromium-driver)
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=(false)
fi

if [ ${#packages[@]} -gt 0 ]; then
  say "missing Debian packages: ${packages[*]} (for the SSH demo$($tests && echo ' and the tests'))"
  if [ "${sudo[*]}" = "false" ]; then
    say "not root and no passwordless sudo; install them with:"
    say "  sudo apt-get install --no-install-recommends --no-upgrade ${packages[*]}"
  else
    say "installing them with apt-get: nothing installed is upgraded, no service is started or enabled"
    policy="${KUBERDE_POLICY_RC_D:-/usr/sbin/policy-rc.d}"
    held=false
    if [ ! -e "$policy" ]; then
      # invoke-rc.d and deb-systemd-invoke ask this before starting a service: 101 = never.
      printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
      "${sudo[@]}" chmod 755 "$policy"
      held=true
    fi
    cleanup() { if $held; then "${sudo[@]}" rm -f "$policy"; fi; }
    trap cleanup EXIT
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    new_sshd=false
    [[ " ${packages[*]}" == *" openssh-server"* ]] && new_sshd=true
    for i in "${!packages[@]}"; do
      if [[ "${packages[$i]}" == openssh-server=* ]] && ! apt-cache madison openssh-server | grep -qF "| ${packages[$i]#openssh-server=} |"; then
        # The archive no longer has the installed client's version: the server comes at the
        # archive's version, and apt upgrades the client with it (the two must match).
        say "the one exception: openssh-client ${packages[$i]#openssh-server=} is no longer in" \
          "the archive, so openssh-server comes at the archive's version and openssh-client is" \
          "upgraded to match"
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends openssh-server
        unset 'packages[i]'
      fi
    done
    if [ ${#packages[@]} -gt 0 ]; then
      "${sudo[@]}" apt-get install -y -qq --no-install-recommends --no-upgrade "${packages[@]}"
    fi
    if $new_sshd; then
      if command -v deb-systemd-helper >/dev/null 2>&1; then
        "${sudo[@]}" deb-systemd-helper disable ssh.service ssh.socket >/dev/null 2>&1 || true
      fi
      if command -v update-rc.d >/dev/null 2>&1; then
        "${sudo[@]}" update-rc.d ssh disable >/dev/null 2>&1 || true
      fi
      say "the system's ssh service is installed but not running or enabled (KubeRDE runs its own sshd)"
    fi
  fi
fi

if $tests && [ ! -d tests/oidc_provider/node_modules ]; then
  if command -v npm >/dev/null 2>&1; then
    say "installing the test OIDC provider from npm into tests/oidc_provider/node_modules"
    npm ci --prefix tests/oidc_provider --no-audit --no-fund --loglevel=error
  else
    say "npm is missing: the authentication tests against the npm OIDC provider will fail"
  fi
fi

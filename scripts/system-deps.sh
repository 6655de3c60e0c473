#!/usr/bin/env bash
# Install what KubeRDE's demo and tests use beyond Python: OpenSSH (client and server) from
# Debian, and, with --tests, kubectl and the npm OIDC provider the tests run against.
# apt-get runs when root (or with passwordless sudo); otherwise it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
[ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1 || missing+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v scp >/dev/null 2>&1 \
  && command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
tests=false
if [ "${1:-}" = "--tests" ]; then
  tests=true
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  # The runbook tests run the real kubectl (Debian's kubernetes-client where it is missing).
  command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
fi

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  sudo=(false)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${sudo[*]}" = "false" ]; then
    echo "note: apt-get install ${missing[*]} (needed by the SSH demo and the tests)" >&2
  else
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

if $tests && [ ! -d tests/oidc_provider/node_modules ] && command -v npm >/dev/null 2>&1; then
  npm ci --prefix tests/oidc_provider --no-audit --no-fund --loglevel=error
fi

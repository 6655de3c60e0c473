#!/usr/bin/env bash
# Install code-server (npm) for the opt-in test tests/e2e/test_code_server.py, on a machine
# that reaches the npm and Debian registries but not GitHub.
#
#   scripts/install-code-server.sh [DIR]      (default: tests/code_server)
#
# then run the test with KUBERDE_TEST_CODE_SERVER=DIR/node_modules/.bin/code-server.
#
# A plain `npm install code-server` fails here: its postinstall runs `npm install` in
# lib/vscode, where @vscode/ripgrep's postinstall downloads rg from GitHub releases. So the
# packages are installed without scripts, Debian's rg is put where @vscode/ripgrep looks
# (its postinstall then finds bin/ and stops), and the native modules are built from source
# (prebuilt binaries are on GitHub too), which needs a C++ toolchain and libkrb5-dev (for
# the kerberos module). code-server 4.100.3 is the last release for Node.js 20 (Debian
# 12's); later ones require Node.js 22 or 24. It installs nothing system-wide: missing
# Debian packages are named, not installed.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=4.100.3
dir="${1:-tests/code_server}"
say() { echo "install-code-server: $*" >&2; }

missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v rg >/dev/null 2>&1 || missing+=(ripgrep)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
[ -e /usr/include/gssapi/gssapi.h ] || missing+=(libkrb5-dev)
if [ ${#missing[@]} -gt 0 ]; then
  say "missing Debian packages: ${missing[*]}; install them with:"
  say "  sudo apt-get install --no-install-recommends --no-upgrade ${missing[*]}"
  exit 1
fi
major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$major" != 20 ]; then
  say "code-server $VERSION needs Node.js 20, this is $(node --version)"
  exit 1
fi

# node-gyp fetches Node.js headers from nodejs.org unless told where Debian's are.
if [ "$(npm config get nodedir)" = undefined ] && [ -e /usr/include/node/node_version.h ]; then
  export npm_config_nodedir=/usr
fi

mkdir -p "$dir"
say "npm install code-server@$VERSION into $dir (scripts off)"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error --ignore-scripts \
  "code-server@$VERSION"
package="$dir/node_modules/code-server"
(
  cd "$package/lib/vscode"
  say "installing VS Code's own dependencies (scripts off)"
  npm install --omit=dev --no-audit --no-fund --loglevel=error --ignore-scripts
  mkdir -p node_modules/@vscode/ripgrep/bin
  ln -sf "$(command -v rg)" node_modules/@vscode/ripgrep/bin/rg
  say "building the native modules from source (a few minutes)"
  # node-pty runs `npx node-gyp`, which would stop to ask before fetching it from npm.
  npm_config_yes=true npm rebuild --loglevel=error
)
say "building argon2 (code-server's password hashing) from source"
npm_config_build_from_source=true npm rebuild --prefix "$dir" --loglevel=error argon2
say "running code-server's own postinstall (links, built-in extensions' dependencies)"
(
  cd "$package"
  npm_config_user_agent="npm/$(npm --version) node/$(node --version) linux x64" \
    npm_config_unsafe_perm=true sh ./postinstall.sh
)
"$dir/node_modules/.bin/code-server" --version
say "done: KUBERDE_TEST_CODE_SERVER=$dir/node_modules/.bin/code-server"

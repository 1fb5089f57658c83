# shellcheck shell=bash
# Helpers for .ci/run and .ci/debian13 (sourced, not run).
#
# A stage is a shell function run under `stage "name" function args...`: it is timed, its
# output is kept, and its result is one of passed, FAILED or skipped. A stage that cannot run
# here (an interpreter or tool missing) calls `cannot_run "why"`: it is skipped with a warning
# and does not fail CI. A stage that runs and fails does.

CI_CANNOT_RUN=77 # a stage's exit status for "cannot run here" (no tool uses it: pytest ends 0-5)

ci_tmp=$(mktemp -d "${TMPDIR:-/tmp}/asyncsp-ci.XXXXXX")
_ci_cleanups=()
_ci_names=()
_ci_results=()
_ci_times=()
_ci_notes=()

# Run a command when the script exits, however it exits (last registered runs first).
on_exit() {
    _ci_cleanups+=("$*")
}

_ci_exit() {
    local status=$? i
    trap - EXIT INT TERM HUP
    for ((i = ${#_ci_cleanups[@]} - 1; i >= 0; i--)); do
        eval "${_ci_cleanups[i]}" || true
    done
    rm -rf "$ci_tmp"
    exit "$status"
}
trap _ci_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

cannot_run() {
    echo "warning: this stage cannot run here: $*" >&2
    exit "$CI_CANNOT_RUN"
}

# apt-get install the packages not installed yet, keeping packaged daemons from starting and
# removing nothing (a package that conflicts with an installed one is not installed):
# invoke-rc.d asks policy-rc.d first, and 101 means "action not allowed". Nothing here ever has
# to stop a server by name, which on a shared machine would end servers others started.
apt_install() {
    local missing=() pkg policy=/usr/sbin/policy-rc.d status=0
    for pkg in "$@"; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    [ "${#missing[@]}" -gt 0 ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "warning: cannot install ${missing[*]} (needs root and apt-get)" >&2
        return 1
    fi
    _ci_policy_saved=""
    if [ -e "$policy" ]; then
        _ci_policy_saved="$ci_tmp/policy-rc.d.saved"
        cp -p "$policy" "$_ci_policy_saved"
    fi
    _ci_policy_ours=1
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    (export DEBIAN_FRONTEND=noninteractive &&
        apt-get update -qq &&
        apt-get install -y -qq --no-install-recommends --no-remove "${missing[@]}") || status=$?
    _restore_policy
    [ "$status" = 0 ] || echo "warning: could not install ${missing[*]}" >&2
    return "$status"
}

# Put back the policy-rc.d that was there before apt_install (none: remove ours); also run
# when the script is stopped during an install.
_ci_policy_ours=""
_ci_policy_saved=""
_restore_policy() {
    [ -n "$_ci_policy_ours" ] || return 0
    if [ -n "$_ci_policy_saved" ]; then
        mv -f "$_ci_policy_saved" /usr/sbin/policy-rc.d
    else
        rm -f /usr/sbin/policy-rc.d
    fi
    _ci_policy_ours=""
}
on_exit _restore_policy

# pytest's closing line ("905 passed, 5 skipped in 94.39s"), without its timing.
_pytest_counts() {
    grep -aE '^(=+ )?[0-9]+ (passed|failed|errors?|skipped|deselected)|no tests ran' "$1" |
        tail -n 1 | sed -E 's/^=+ //; s/ =+$//; s/,? *[0-9]+ warnings?//; s/ in [0-9.]+s.*$//'
}

_ci_duration() {
    printf '%d:%02d' $(($1 / 60)) $(($1 % 60))
}

# stage "name" command args...: run one stage, timed, its output also kept for the summary.
stage() {
    local name=$1 log status started elapsed counts
    shift
    log="$ci_tmp/stage-${#_ci_names[@]}.log"
    echo
    echo "== $name"
    started=$SECONDS
    set +e
    (set -e && "$@") 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    set -e
    elapsed=$((SECONDS - started))
    counts=$(_pytest_counts "$log" || true)
    _ci_names+=("$name")
    _ci_times+=("$elapsed")
    _ci_notes+=("$counts")
    case "$status" in
        0) _ci_results+=(passed) ;;
        "$CI_CANNOT_RUN") _ci_results+=(skipped) ;;
        *) _ci_results+=(FAILED) ;;
    esac
    echo "-- $name: ${_ci_results[-1]} in $(_ci_duration "$elapsed")${counts:+ ($counts)}"
}

# The table of stages; the status is 1 if any stage failed.
stage_summary() {
    local i failed=0
    echo
    echo "== summary (total $(_ci_duration "$SECONDS"))"
    for i in "${!_ci_names[@]}"; do
        printf '%-7s %6s  %s%s\n' "${_ci_results[i]}" "$(_ci_duration "${_ci_times[i]}")" \
            "${_ci_names[i]}" "${_ci_notes[i]:+: ${_ci_notes[i]}}"
        [ "${_ci_results[i]}" != FAILED ] || failed=1
    done
    return "$failed"
}

# "Python 3.11.7, OpenSSL 3.0.17 1 Jul 2025" for an interpreter.
describe_python() {
    "$1" -c 'import ssl, sys; print(f"Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")'
}

# A fresh venv from python $1 at $2, with the project and its test extra installed.
make_test_venv() {
    local python=$1 venv=$2
    shift 2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e ".[test]" "$@"
}

#!/usr/bin/env bash
# scripts/container.sh: build and smoke-test mono-proxy's container images offline, with podman.
#
# No registry is needed: the Debian base is made with mmdebstrap from the host's Debian mirror,
# and every `podman build` runs with --network=none. See docs/deploy.md, "Building the image".
#
# Usage: scripts/container.sh COMMAND [ARGS]
#   base [--force]   mmdebstrap a bookworm minbase (+ ca-certificates; no docs, man pages,
#                    locales or info) and `podman import` it as $BASE_IMAGE. Skipped while an
#                    image made by the same recipe exists, unless --force.
#   build [BINARY]   build two runtime images from a release binary (default
#                    ${CARGO_TARGET_DIR:-target}/release/mono-proxy, built with
#                    `cargo build --release --locked` when missing; the image gets a stripped
#                    copy):
#                      $IMAGE          FROM $BASE_IMAGE, the same runtime as the Dockerfile's
#                      $MINIMAL_IMAGE  FROM scratch: the binary, its shared libraries, the CA
#                                      bundle, /etc/passwd and /etc/group
#                    prints their sizes and fails above $MAX_DEBIAN_MB / $MAX_MINIMAL_MB.
#   smoke [IMAGE]    run IMAGE (default $IMAGE) against the sandbox (run on the host) and check:
#                    healthcheck, a balance read MISS then HIT, a realtime read, SIGTERM exit 0,
#                    the key never in the logs. One PASS/FAIL line per check.
#   all              base, build, smoke $IMAGE, smoke $MINIMAL_IMAGE.
#
# Environment (defaults in brackets):
#   BASE_IMAGE [localhost/mono-proxy-base:bookworm]   IMAGE [localhost/mono-proxy:dev]
#   MINIMAL_IMAGE [localhost/mono-proxy:dev-minimal]  DEBIAN_SUITE [bookworm]
#   DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR [read from /etc/apt/sources.list*, else deb.debian.org]
#   MAX_DEBIAN_MB [150]  MAX_MINIMAL_MB [30]  (1 MB = 1,000,000 bytes, as podman counts)
#   HEALTH_TIMEOUT [30] seconds for the container to turn healthy; STOP_TIMEOUT [35] seconds
#   for it to exit after SIGTERM (the default [server] drain_timeout is 30 s).
#
# Podman quirks on our machines, handled here: crun cannot start containers (hybrid cgroups),
# so every build and run uses `--runtime runc`; podman's default rlimits exceed the host's
# ("error setting rlimit type 7"), so build and run pass --ulimit nofile/nproc explicitly;
# HEALTHCHECK is kept only in the docker image format (--format docker); with no systemd the
# check is run by hand (`podman healthcheck run NAME`).
#
# Needs (Debian): podman runc mmdebstrap (plus binutils for strip, curl for smoke).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

BASE_IMAGE="${BASE_IMAGE:-localhost/mono-proxy-base:bookworm}"
IMAGE="${IMAGE:-localhost/mono-proxy:dev}"
MINIMAL_IMAGE="${MINIMAL_IMAGE:-localhost/mono-proxy:dev-minimal}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
MAX_DEBIAN_MB="${MAX_DEBIAN_MB:-150}"
MAX_MINIMAL_MB="${MAX_MINIMAL_MB:-30}"
HEALTH_TIMEOUT="${HEALTH_TIMEOUT:-30}"
STOP_TIMEOUT="${STOP_TIMEOUT:-35}"

log() { printf '%s\n' "container.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# podman with runc, not crun (see the header), for whatever starts a container.
pm() { podman --runtime runc "$@"; }

# A soft:hard pair at most CAP and at most the host's hard limit.
rlimit_pair() {
    local hard="$1" cap="$2"
    if [[ "$hard" == unlimited ]] || ((hard > cap)); then
        hard="$cap"
    fi
    printf '%s:%s' "$hard" "$hard"
}
ulimits=(
    --ulimit "nofile=$(rlimit_pair "$(ulimit -Hn)" 65536)"
    --ulimit "nproc=$(rlimit_pair "$(ulimit -Hu)" 8192)"
)

# The first Debian archive URI in the host's APT sources whose path ends in /$1.
host_mirror() {
    local archive="$1" uri
    uri="$(
        {
            grep -hsE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources | awk '{for (i = 2; i <= NF; i++) print $i}'
            grep -hsE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
                sed -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' | awk '{print $1}'
        } | grep -E "^https?://[^[:space:]]+/${archive}/?$" | head -n1
    )" || true
    printf '%s' "${uri%/}"
}

# The release binary: $1 when given, else cargo's; built when it is missing.
host_binary() {
    local bin="${1:-}"
    if [[ -n "$bin" ]]; then
        [[ -x "$bin" ]] || die "$bin: not an executable file"
        printf '%s' "$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
        return
    fi
    local target="${CARGO_TARGET_DIR:-target}"
    [[ "$target" == /* ]] || target="$repo/$target"
    bin="$target/release/mono-proxy"
    if [[ ! -x "$bin" ]]; then
        log "$bin is missing: cargo build --release --locked --bin mono-proxy"
        (cd "$repo" && cargo build --release --locked --bin mono-proxy >&2)
    fi
    printf '%s' "$bin"
}

# Temporary directories, removed on exit (with the smoke test's container and sandbox).
# scratch_dir sets $scratch (not printed: a $(subshell) could not record it here).
tmpdirs=()
scratch=""
scratch_dir() {
    scratch="$(mktemp -d "${TMPDIR:-/tmp}/mono-proxy-container.XXXXXX")"
    tmpdirs+=("$scratch")
}
on_exit() {
    smoke_cleanup
    if ((${#tmpdirs[@]})); then
        rm -rf "${tmpdirs[@]}"
    fi
}
trap on_exit EXIT

size_mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1000000 }'; }

# ---- base --------------------------------------------------------------------------------
cmd_base() {
    local force=0
    case "${1:-}" in
        --force) force=1 ;;
        "") ;;
        *) die "base: unknown argument $1" ;;
    esac
    local mirror security
    mirror="${DEBIAN_MIRROR:-$(host_mirror debian)}"
    mirror="${mirror:-http://deb.debian.org/debian}"
    security="${DEBIAN_SECURITY_MIRROR:-$(host_mirror debian-security)}"
    local sources=(
        "deb $mirror $DEBIAN_SUITE main"
        "deb $mirror $DEBIAN_SUITE-updates main"
    )
    [[ -n "$security" ]] && sources+=("deb $security $DEBIAN_SUITE-security main")
    # merged-usr hook: /bin, /lib... as symlinks, the way debootstrap makes them, instead of
    # apt choosing the usrmerge package (which pulls in perl: +40 MB). The path excludes stay
    # in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), as in Debian's slim images.
    # force-unsafe-io: no fsync per unpacked file (the tarball is what counts). No device
    # nodes: podman makes /dev.
    local options=(
        --variant=minbase --include=ca-certificates
        --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
        --dpkgopt=force-unsafe-io
        --dpkgopt='path-exclude=/usr/share/doc/*'
        --dpkgopt='path-include=/usr/share/doc/*/copyright'
        --dpkgopt='path-exclude=/usr/share/man/*'
        --dpkgopt='path-exclude=/usr/share/locale/*'
        --dpkgopt='path-exclude=/usr/share/info/*'
        --dpkgopt='path-exclude=/usr/share/lintian/*'
        --aptopt='Acquire::Languages "none"'
        --skip=output/dev
    )
    # The recipe's digest, kept as a label: an existing base made another way is remade.
    local recipe old=""
    recipe="$(printf '%s\n' "${options[@]}" "$DEBIAN_SUITE" "${sources[@]}" | sha256sum | cut -c1-16)"
    if podman image exists "$BASE_IMAGE"; then
        old="$(podman image inspect --format '{{.Id}} {{index .Config.Labels "mono-proxy.base-recipe"}}' "$BASE_IMAGE")"
        if ((!force)) && [[ "${old#* }" == "$recipe" ]]; then
            log "base: $BASE_IMAGE exists, same recipe (--force to remake it)"
            return
        fi
    fi
    command -v mmdebstrap >/dev/null || die "mmdebstrap is missing (apt-get install mmdebstrap)"

    scratch_dir
    local tmp="$scratch"
    log "base: mmdebstrap $DEBIAN_SUITE minbase + ca-certificates from $mirror"
    if ! mmdebstrap "${options[@]}" "$DEBIAN_SUITE" "$tmp/rootfs.tar" "${sources[@]}" \
        >"$tmp/mmdebstrap.log" 2>&1; then
        tail -n 40 "$tmp/mmdebstrap.log" >&2
        die "base: mmdebstrap failed (log above)"
    fi
    pm import --quiet \
        --change 'CMD ["/bin/bash"]' \
        --change "LABEL mono-proxy.base-recipe=$recipe" \
        --message "mmdebstrap --variant=minbase $DEBIAN_SUITE + ca-certificates" \
        "$tmp/rootfs.tar" "$BASE_IMAGE" >/dev/null
    # The previous base, now untagged (kept while images built on it exist).
    if [[ -n "$old" ]]; then
        podman rmi "${old%% *}" >/dev/null 2>&1 || true
    fi
    log "base: $BASE_IMAGE, $(size_mb "$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")") MB"
}

# ---- build -------------------------------------------------------------------------------
# The runtime settings of the Dockerfile's run stage (ENV through ENTRYPOINT), read from the
# Dockerfile itself so the offline images and the registry build cannot drift apart.
runtime_tail() {
    local tail
    tail="$(sed -n '/^ENV MONO_PROXY_LISTEN=/,/^ENTRYPOINT /p' "$repo/Dockerfile")"
    if ! grep -q '^HEALTHCHECK ' <<<"$tail" || ! grep -q '^ENTRYPOINT ' <<<"$tail"; then
        die "cannot find the run stage's ENV ... ENTRYPOINT lines in $repo/Dockerfile"
    fi
    printf '%s\n' "$tail"
}

# --layers=false: no intermediate images are kept; the image this tag named before is
# removed, so repeated builds (CI) do not pile up untagged images.
podman_build() {
    local tag="$1" context="$2" old=""
    old="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null)" || old=""
    pm build --quiet --layers=false --network=none --pull=never --format docker "${ulimits[@]}" \
        --label "org.opencontainers.image.title=mono-proxy" \
        --label "org.opencontainers.image.version=$version" \
        --tag "$tag" "$context" >/dev/null
    if [[ -n "$old" && "$old" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]]; then
        podman rmi "$old" >/dev/null 2>&1 || true
    fi
}

check_size() {
    local image="$1" max_mb="$2" bytes
    bytes="$(podman image inspect --format '{{.Size}}' "$image")"
    if ((bytes > max_mb * 1000000)); then
        log "FAIL size $image: $bytes bytes ($(size_mb "$bytes") MB) > $max_mb MB"
        return 1
    fi
    log "PASS size $image: $bytes bytes ($(size_mb "$bytes") MB) <= $max_mb MB"
}

cmd_build() {
    local bin
    bin="$(host_binary "${1:-}")"
    podman image exists "$BASE_IMAGE" || cmd_base ""
    version="$(sed -nE 's/^version = "([^"]+)".*/\1/p' "$repo/Cargo.toml" | head -n1)"

    scratch_dir
    local tmp="$scratch"

    # The stripped copy (the release profile keeps line tables; target/ is left alone).
    local stripped="$tmp/mono-proxy"
    strip --strip-all -o "$stripped" "$bin"
    chmod 0755 "$stripped"
    log "build: $bin ($(size_mb "$(stat -c %s "$bin")") MB) stripped to $(size_mb "$(stat -c %s "$stripped")") MB"

    # Debian: the Dockerfile's run stage on the local base.
    mkdir "$tmp/debian"
    cp "$stripped" "$tmp/debian/mono-proxy"
    {
        echo "FROM $BASE_IMAGE"
        cat <<'EOF'
RUN groupadd --system --gid 10001 mono-proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin mono-proxy
COPY mono-proxy /usr/local/bin/mono-proxy
EOF
        runtime_tail
    } >"$tmp/debian/Containerfile"
    log "build: $IMAGE (FROM $BASE_IMAGE)"
    podman_build "$IMAGE" "$tmp/debian"

    # Minimal: FROM scratch, only what the binary opens.
    local root="$tmp/minimal/rootfs"
    mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
    chmod 1777 "$root/tmp"
    cp "$stripped" "$root/usr/local/bin/mono-proxy"
    local lib
    while read -r lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done < <(ldd "$stripped" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
    # Debian's CA bundle, from the base image rather than whatever the host has added.
    local mnt
    mnt="$(podman image mount "$BASE_IMAGE")"
    cp "$mnt/etc/ssl/certs/ca-certificates.crt" "$root/etc/ssl/certs/"
    podman image unmount "$BASE_IMAGE" >/dev/null
    printf '%s\n' 'root:x:0:0:root:/root:/usr/sbin/nologin' \
        'mono-proxy:x:10001:10001:mono-proxy:/nonexistent:/usr/sbin/nologin' >"$root/etc/passwd"
    printf '%s\n' 'root:x:0:' 'mono-proxy:x:10001:' >"$root/etc/group"
    printf '%s\n' 'passwd: files' 'group: files' 'hosts: files dns' >"$root/etc/nsswitch.conf"
    {
        echo "FROM scratch"
        echo "COPY rootfs/ /"
        runtime_tail
    } >"$tmp/minimal/Containerfile"
    log "build: $MINIMAL_IMAGE (FROM scratch: $(cd "$root" && find . -type f | sed 's|^\.||' | tr '\n' ' '))"
    podman_build "$MINIMAL_IMAGE" "$tmp/minimal"

    local failed=0
    check_size "$IMAGE" "$MAX_DEBIAN_MB" || failed=1
    check_size "$MINIMAL_IMAGE" "$MAX_MINIMAL_MB" || failed=1
    return "$failed"
}

# ---- smoke -------------------------------------------------------------------------------
# A loopback port nothing listens on, not in $taken (below the usual ephemeral range).
taken=""
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 12000))
        [[ " $taken " == *" $p "* ]] && continue
        if ! (: <"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            taken+=" $p"
            printf '%s' "$p"
            return
        fi
    done
    die "no free loopback port found"
}

smoke_passed=0
smoke_failed=0
pass() {
    smoke_passed=$((smoke_passed + 1))
    printf 'PASS %s\n' "$*"
}
fail() {
    smoke_failed=$((smoke_failed + 1))
    printf 'FAIL %s\n' "$*"
}

# Header $2 of the response head in file $1 (last match, CR stripped).
header() { tr -d '\r' <"$1" | awk -v h="$2" 'tolower($0) ~ "^" tolower(h) ":" { sub(/^[^:]*:[ \t]*/, ""); v = $0 } END { print v }'; }
status() { tr -d '\r' <"$1" | awk 'NR == 1 { print $2 }'; }

smoke_cleanup() {
    if [[ -n "${smoke_name:-}" ]]; then
        podman rm --force --time 0 "$smoke_name" >/dev/null 2>&1 || true
    fi
    if [[ -n "${sandbox_pid:-}" ]]; then
        kill "$sandbox_pid" 2>/dev/null || true
        wait "$sandbox_pid" 2>/dev/null || true
    fi
    smoke_name="" sandbox_pid=""
}

cmd_smoke() {
    local image="${1:-$IMAGE}"
    podman image exists "$image" || die "smoke: no image $image (run: $0 build)"
    command -v curl >/dev/null || die "smoke: curl is missing"
    local bin
    bin="$(host_binary "")"

    smoke_passed=0 smoke_failed=0
    scratch_dir
    smoke_tmp="$scratch"
    local sandbox_port listen_port admin_port key
    sandbox_port="$(free_port)"
    listen_port="$(free_port)"
    admin_port="$(free_port)"
    # A fake key, easy to find in a log; the sandbox accepts only it.
    key="test_sk_container_smoke_$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
    local proxy="http://127.0.0.1:$listen_port"
    local account="smoke$RANDOM"
    echo "smoke $image: sandbox 127.0.0.1:$sandbox_port, proxy $proxy, admin 127.0.0.1:$admin_port"

    # The sandbox (the Mono simulator), on the host, with the host binary.
    (cd "$smoke_tmp" && MONO_SANDBOX_KEY="$key" exec "$bin" sandbox --listen "127.0.0.1:$sandbox_port") \
        >"$smoke_tmp/sandbox.log" 2>&1 &
    sandbox_pid=$!
    local i
    for i in $(seq 50); do
        curl -fsS -o /dev/null "http://127.0.0.1:$sandbox_port/__sandbox/counts" 2>/dev/null && break
        ((i == 50)) && {
            cat "$smoke_tmp/sandbox.log" >&2
            die "smoke: the sandbox did not start"
        }
        sleep 0.1
    done

    smoke_name="mono-proxy-smoke-$$-$RANDOM"
    # The key goes in by name (-e NAME), so it is not on podman's command line. With no
    # systemd, podman logs that it cannot add the healthcheck timer: expected, filtered out.
    MONO_SEC_KEY="$key" pm run --detach --name "$smoke_name" --network=host "${ulimits[@]}" \
        --env MONO_SEC_KEY \
        --env "MONO_PROXY_LISTEN=127.0.0.1:$listen_port" \
        --env "MONO_PROXY_ADMIN_LISTEN=127.0.0.1:$admin_port" \
        --env "MONO_PROXY_PUBLIC_BASE_URL=$proxy" \
        --env "MONO_PROXY_UPSTREAM_URL=http://127.0.0.1:$sandbox_port" \
        "$image" >/dev/null 2>"$smoke_tmp/run.err" || {
        cat "$smoke_tmp/run.err" >&2
        die "smoke: podman run $image failed"
    }
    grep -v 'unable to get systemd connection' "$smoke_tmp/run.err" >&2 || true

    # 1. The image's user and healthcheck survived the build.
    local user health
    user="$(podman image inspect --format '{{.Config.User}}' "$image")"
    health="$(podman image inspect --format '{{if .Config.Healthcheck}}{{join .Config.Healthcheck.Test " "}}{{end}}' "$image")"
    if [[ "$user" == 10001:10001 && "$health" == *"mono-proxy healthcheck"* ]]; then
        pass "image config: user $user, healthcheck [$health]"
    else
        fail "image config: user '$user' (want 10001:10001), healthcheck '$health'"
    fi

    # 2. Healthy: the image's own HEALTHCHECK, run by hand (no systemd timer here).
    local start=$SECONDS healthy=0 out=""
    while ((SECONDS - start < HEALTH_TIMEOUT)); do
        if out="$(podman healthcheck run "$smoke_name" 2>&1)"; then
            healthy=1
            break
        fi
        [[ "$(podman inspect --format '{{.State.Running}}' "$smoke_name" 2>/dev/null)" == true ]] || break
        sleep 0.5
    done
    if ((healthy)); then
        pass "healthcheck: podman healthcheck run -> healthy after $((SECONDS - start)) s"
    else
        fail "healthcheck: not healthy within ${HEALTH_TIMEOUT} s (last: ${out:-none})"
    fi

    # 3. A balance read twice: a miss stored, then a hit.
    local url="$proxy/v2/accounts/$account/balance" n st cs xc
    for n in 1 2; do
        curl -sS -o "$smoke_tmp/body$n" -D "$smoke_tmp/head$n" "$url" 2>>"$smoke_tmp/curl.err" || true
    done
    for n in 1 2; do
        [[ -s "$smoke_tmp/head$n" ]] || : >"$smoke_tmp/head$n"
    done
    st="$(status "$smoke_tmp/head1")" cs="$(header "$smoke_tmp/head1" Cache-Status)" xc="$(header "$smoke_tmp/head1" x-cache)"
    if [[ "$st" == 200 && "$cs" == *fwd=miss* && "$xc" == MISS ]]; then
        pass "balance read 1: $st, Cache-Status: $cs, x-cache: $xc"
    else
        fail "balance read 1: status '$st', Cache-Status '$cs', x-cache '$xc' (want 200, fwd=miss, MISS)"
    fi
    st="$(status "$smoke_tmp/head2")" cs="$(header "$smoke_tmp/head2" Cache-Status)" xc="$(header "$smoke_tmp/head2" x-cache)"
    if [[ "$st" == 200 && "$cs" == *hit* && "$xc" == HIT ]]; then
        pass "balance read 2: $st, Cache-Status: $cs, x-cache: $xc"
    else
        fail "balance read 2: status '$st', Cache-Status '$cs', x-cache '$xc' (want 200, hit, HIT)"
    fi

    # 4. A realtime read (x-realtime: true): 200 with the job's headers.
    curl -sS -o "$smoke_tmp/body3" -D "$smoke_tmp/head3" -H 'x-realtime: true' "$url" \
        2>>"$smoke_tmp/curl.err" || : >"$smoke_tmp/head3"
    st="$(status "$smoke_tmp/head3")"
    if [[ "$st" == 200 ]]; then
        pass "realtime read: $st, x-job-id: $(header "$smoke_tmp/head3" x-job-id), x-job-status: $(header "$smoke_tmp/head3" x-job-status)"
    else
        fail "realtime read: status '$st' (want 200)"
    fi

    # 5. SIGTERM: drain, exit 0 (podman wait bounded by STOP_TIMEOUT).
    local code
    start=$SECONDS
    if [[ "$(podman inspect --format '{{.State.Running}}' "$smoke_name")" != true ]]; then
        fail "SIGTERM: the container had already exited (code $(podman inspect --format '{{.State.ExitCode}}' "$smoke_name"))"
    else
        pm kill --signal TERM "$smoke_name" >/dev/null 2>&1 || true
        code="$(timeout "$STOP_TIMEOUT" podman wait "$smoke_name" 2>/dev/null)" || code="timeout"
        if [[ "$code" == 0 ]]; then
            pass "SIGTERM: exit 0 after $((SECONDS - start)) s"
        else
            fail "SIGTERM: exit '$code' (want 0 within ${STOP_TIMEOUT} s)"
        fi
    fi

    # 6. The logs: requests logged (JSON), the key never.
    podman logs "$smoke_name" >"$smoke_tmp/container.log" 2>&1 || true
    local lines
    lines="$(grep -c '"message":"request"' "$smoke_tmp/container.log" || true)"
    if grep -qF "$key" "$smoke_tmp/container.log"; then
        fail "logs: the secret key appears in podman logs"
    elif ((lines < 3)); then
        fail "logs: $lines JSON access lines (want >= 3)"
    else
        pass "logs: $lines JSON access lines, $(wc -l <"$smoke_tmp/container.log") lines in all, no key"
    fi

    if ((smoke_failed)); then
        echo "--- container log (last 30 lines)"
        tail -n 30 "$smoke_tmp/container.log"
        echo "--- sandbox log (last 10 lines)"
        tail -n 10 "$smoke_tmp/sandbox.log"
        if [[ -s "$smoke_tmp/curl.err" ]]; then
            echo "--- curl"
            cat "$smoke_tmp/curl.err"
        fi
    fi
    smoke_cleanup
    if ((smoke_failed)); then
        echo "smoke $image: FAIL ($smoke_failed of $((smoke_passed + smoke_failed)) checks failed)"
        return 1
    fi
    echo "smoke $image: PASS (all $smoke_passed checks)"
}

# ---- all ---------------------------------------------------------------------------------
timed() {
    local start=$SECONDS
    "$@"
    log "${*#cmd_} took $((SECONDS - start)) s"
}

cmd_all() {
    local start=$SECONDS
    timed cmd_base
    timed cmd_build
    timed cmd_smoke "$IMAGE"
    timed cmd_smoke "$MINIMAL_IMAGE"
    log "all took $((SECONDS - start)) s"
}

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'; }

version=""
case "${1:-}" in
    base | build | smoke | all)
        cmd="$1"
        shift
        "cmd_$cmd" "$@"
        ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac

# A development container that runs the whole test suite exactly as CI does:
#
#   docker build -t nomad-driver-xen-dev .
#   docker run --rm --privileged nomad-driver-xen-dev            # make test
#   docker run --rm --privileged nomad-driver-xen-dev make demo
#
# --privileged is needed because the Xen testbed image is built with debootstrap (chroot,
# mounts) and booted with QEMU.  The plugin itself is not meant to run in a container: it
# belongs on the Xen dom0 next to the Nomad client (see README.md, "Install").
#
# Go comes from the base image (Nomad is built from the Go module proxy with it); everything
# else comes from Debian bookworm and PyPI, installed by the project's own scripts.
#
# The release artifacts (what `make dist` builds: the single-file plugin, wheel, sdist, .deb),
# by the same script, into ./dist on the host:
#
#   docker build --target dist --output dist .

FROM debian:bookworm-slim AS dist-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv git ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . /src
RUN python3 tools/dist.py --out /dist

FROM scratch AS dist
COPY --from=dist-build /dist/ /

# The development image (the default target: the last stage).
FROM golang:1.26-bookworm AS dev

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NDX_CACHE_DIR=/var/cache/nomad-driver-xen

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-dev gcc make git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . /src

# Debian packages and the virtualenv, by the project's
# own installer (testbed/build.sh adds QEMU and debootstrap on first use); the Nomad agent and the testbed images are built on first `make test` and
# cached under $NDX_CACHE_DIR (mount a volume there to keep them between runs).
RUN bash tools/install-deps.sh .venv

CMD ["make", "test"]

# The one wacast image: the three daemons and wacast-ctl, built on Debian 12
# with its -dev packages and run on Debian 12 slim with only the runtime
# libraries, as a non-root user. The entrypoint picks the daemon by argument
# (`wacast scheduler|dispatcher|sender|ctl ...`) or by WACAST_ROLE, and execs
# it so SIGTERM reaches the daemon. No secret is baked in: every setting comes
# from the environment at run time (see `wacast <role> --help`). stunnel4 is
# the TLS sidecar for a rediss:// Redis (`wacast redis-tls`): Debian 12's
# hiredis has no TLS.
#
# Built and tested here with
#   podman build --isolation=chroot --network=host --pull=never --format=docker -t wacast:dev .
# (tests/deploy/image_test.sh; --format=docker keeps the HEALTHCHECK).

FROM docker.io/library/debian:bookworm-slim AS build
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      gcc libc6-dev make cmake pkg-config protobuf-c-compiler \
      libhiredis-dev libevent-dev libpq-dev libjansson-dev libcurl4-openssl-dev \
      libssl-dev libsodium-dev libprotobuf-c-dev libturbojpeg0-dev libpng-dev libwebp-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY lib/ lib/
COPY sql/ sql/
COPY scheduler/ scheduler/
COPY dispatcher/ dispatcher/
COPY sender/ sender/
COPY cli/ cli/
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release -DWACAST_TESTS=OFF >/dev/null \
 && cmake --build /build -j"$(nproc)" \
      --target wacast-scheduler wacast-dispatcher wacast-sender wacast-ctl \
 && strip /build/wacast-scheduler /build/wacast-dispatcher /build/wacast-sender /build/wacast-ctl

FROM docker.io/library/debian:bookworm-slim
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends \
      libhiredis0.14 libevent-2.1-7 libevent-pthreads-2.1-7 libpq5 libjansson4 libcurl4 \
      libssl3 libsodium23 libprotobuf-c1 libturbojpeg0 libpng16-16 libwebp7 \
      ca-certificates curl stunnel4 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && useradd --system --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin wacast
COPY --from=build /build/wacast-scheduler /build/wacast-dispatcher /build/wacast-sender \
     /build/wacast-ctl /usr/local/bin/
COPY deploy/image/wacast /usr/local/bin/wacast
USER 10001:10001
# PORT serves /healthz, /readyz and /metrics; platforms (Railway) override it.
ENV PORT=8080 WACAST_BIND=0.0.0.0
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/wacast", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/wacast"]

# The one `joinery` binary, for the gateway, agents and the tools.
# Build:  docker build -t joinery:latest .
# Run:    docker run --rm joinery:latest --help

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin joinery \
 && strip target/release/joinery

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 joinery \
 && useradd --system --uid 10001 --gid joinery --home-dir /var/lib/joinery --create-home joinery \
 && install -d -o joinery -g joinery -m 0750 /shared
# /shared is where deploy/compose mounts its shared volume: a new named
# volume takes this directory's owner, so the stack (running as joinery)
# can write it.
COPY --from=build /src/target/release/joinery /usr/local/bin/joinery
USER joinery:joinery
WORKDIR /var/lib/joinery
# gRPC over mutual TLS; metrics, /healthz and /readyz.
EXPOSE 7443 9464
# Healthy when /readyz answers 200 (needs --metrics-listen 0.0.0.0:9464).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD ["joinery", "probe", "http://127.0.0.1:9464/readyz"]
ENTRYPOINT ["joinery"]
CMD ["--help"]

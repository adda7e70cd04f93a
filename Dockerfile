# syntax=docker/dockerfile:1
# memstore (and raftify-cli) in a small image.
#
#   docker build -t memstore .
#   docker compose up -d          # the 3-node cluster of docker-compose.yml
#
# The image runs one node: raft (gRPC) on port 60061, HTTP on 8001, data in
# the /data volume, as an unprivileged user. Give it the node's identity
# after the image name, e.g.
#   docker run -v memstore-1:/data -p 127.0.0.1:8001:8001 memstore --id 1
# (a one-node cluster; docker-compose.yml shows a three-node one). Every flag
# can also be set through its RAFTIFY_* environment variable
# (`docker run memstore --help` lists them).

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and the build between image builds; the
# binaries are copied out of the cached target dir in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p memstore -p raftify-cli \
    && install -D -m 0755 target/release/memstore target/release/raftify-cli -t /out

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home memstore \
    && mkdir /data && chown memstore:memstore /data
COPY --from=build /out/memstore /out/raftify-cli /usr/local/bin/
USER memstore
WORKDIR /data
VOLUME /data
# 60061: raft (gRPC) between nodes and for raftify-cli; 8001: the HTTP API.
EXPOSE 60061 8001
ENTRYPOINT ["memstore", "--raft-listen", "0.0.0.0:60061", "--web-server", "0.0.0.0:8001", "--data-dir", "/data"]

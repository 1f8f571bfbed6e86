# Multi-stage build: a static binary (CGO off) in a distroless, non-root image.
# The same flags build it outside Docker:
#   CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o apiproxy .
# .dockerignore keeps .env, data/ and build output out of the context.
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/apiproxy . \
 && mkdir -p /out/data

# No shell, no package manager; /etc/passwd has the nonroot user (65532),
# and CA certificates for the HTTPS upstreams are included.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/apiproxy /apiproxy
# The embedded store (and, with Redis, the local snapshot files) live here;
# mount a volume on it. Nothing else is written: --read-only works.
COPY --from=build --chown=65532:65532 /out/data /data
ENV DATA_DIR=/data PORT=8000
EXPOSE 8000
USER 65532:65532
# distroless has no shell or curl: the binary checks its own /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 CMD ["/apiproxy", "healthcheck"]
ENTRYPOINT ["/apiproxy"]

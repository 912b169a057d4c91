#!/usr/bin/env python3
"""A read-only Docker registry (the pull half of the Registry HTTP API v2) serving the images
of `docker save` archives, for benchmarks on a machine that reaches no registry.

    registry.py PORT IMAGE.tar [IMAGE.tar ...]

Each archive's images are served under their tags (`docker save` of `a/b:t` is pulled as
`127.0.0.1:PORT/a/b:t`). Layers are gzipped once at start (deterministically), so a pull
moves what a pull from a real registry would. Prints `listening on PORT` when ready.
"""

import gzip
import hashlib
import http.server
import io
import json
import sys
import tarfile

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"
LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

blobs = {}
manifests = {}


def digest(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def load(path):
    with tarfile.open(path) as archive:
        index = json.load(archive.extractfile("manifest.json"))
        for image in index:
            config = archive.extractfile(image["Config"]).read()
            blobs[digest(config)] = config
            layers = []
            for layer in image["Layers"]:
                raw = archive.extractfile(layer).read()
                packed = io.BytesIO()
                with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=1) as out:
                    out.write(raw)
                data = packed.getvalue()
                blobs[digest(data)] = data
                layers.append({"mediaType": LAYER, "size": len(data), "digest": digest(data)})
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MANIFEST,
                    "config": {"mediaType": CONFIG, "size": len(config), "digest": digest(config)},
                    "layers": layers,
                }
            ).encode()
            for tag in image.get("RepoTags") or []:
                name, _, reference = tag.rpartition(":")
                # A tag that names a registry (`host:port/a/b`) is served as `a/b` too.
                first, _, rest = name.partition("/")
                names = [name, rest] if rest and (":" in first or "." in first) else [name]
                for served in names:
                    manifests[(served, reference)] = manifest
                    manifests[(served, digest(manifest))] = manifest


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=b"", kind="application/json", extra=None):
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ("/v2", "/v2/"):
            return self.answer(200, b"{}")
        if path.startswith("/v2/") and "/manifests/" in path:
            name, _, reference = path[4:].rpartition("/manifests/")
            manifest = manifests.get((name, reference))
            if manifest is None:
                return self.answer(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')
            return self.answer(200, manifest, MANIFEST, {"Docker-Content-Digest": digest(manifest)})
        if path.startswith("/v2/") and "/blobs/" in path:
            _, _, wanted = path.rpartition("/blobs/")
            blob = blobs.get(wanted)
            if blob is None:
                return self.answer(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
            return self.answer(200, blob, "application/octet-stream", {"Docker-Content-Digest": wanted})
        return self.answer(404, b"{}")

    do_HEAD = do_GET


def main():
    port = int(sys.argv[1])
    for path in sys.argv[2:]:
        load(path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"listening on {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

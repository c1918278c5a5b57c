"""Write an OCI image archive of static binaries, with Python's standard library only.

CI-only helper of e2e/cluster/cluster.sh: images of single static programs (the pod sandbox
`pause`, metrics-server, nats-server) need no base image, no registry and no Docker engine; the
archive is imported into containerd with `ctr images import`.

Usage: python3 oci_image.py --name REF --entrypoint /prog --out image.tar FILE...
(each FILE lands at /<its basename>, mode 0755; PATH is /, so a pod's `command` may name it).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path


def _tar(files: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name.rstrip("/"))
            info.size, info.mode = len(data), mode
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_archive(name: str, entrypoint: str, files: list[Path]) -> bytes:
    """The OCI layout tarball of a one-layer image named ``name``."""
    layer = _tar([(f.name, f.read_bytes(), 0o755) for f in files] + [("tmp/", b"", 0o1777)])
    gz = gzip.compress(layer, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": [entrypoint], "Env": ["PATH=/"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(gz),
                    "size": len(gz),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    ).encode()
    blobs = [(f"blobs/sha256/{_digest(d)[7:]}", d, 0o644) for d in (gz, config, manifest)]
    layout = ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644)
    return _tar([layout, ("index.json", index, 0o644), *blobs])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="image reference, with a tag")
    parser.add_argument("--entrypoint", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("files", nargs="+", type=Path)
    args = parser.parse_args()
    if ":" not in args.name.rsplit("/", 1)[-1]:
        parser.error("--name needs a tag (name:tag)")
    args.out.write_bytes(image_archive(args.name, args.entrypoint, args.files))


if __name__ == "__main__":
    main()

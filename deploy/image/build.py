#!/usr/bin/env python3
"""Builds the kvbridge container image as an OCI image layout, with no container daemon.

The image is one layer, distroless-style: the static `kvbridge` binary, the CA certificates of
the build host's Debian `ca-certificates` package, /etc/passwd and /etc/group with a `nonroot`
user (65532, the default user of the image), an nsswitch.conf for the static resolver, /tmp and
an SPDX SBOM at /usr/share/doc/kvbridge/sbom.spdx.json. No shell, no package manager, no libc.

The layer, config, manifest and index are written directly (Python's tarfile and gzip with fixed
owners, modes and timestamps), so the same binary and inputs give the same digests; the
timestamp is SOURCE_DATE_EPOCH, or the commit time of HEAD. skopeo pushes the layout
(`skopeo copy --all oci:LAYOUT:TAG docker://REGISTRY/kvbridge:TAG`); umoci or any OCI tool
reads it.

Multi-arch: each tag is an image index with one manifest per platform. linux/amd64 and
linux/arm64 are declared; a platform is built when its Rust target is installed (arm64 also
needs the aarch64-linux-gnu-gcc linker, Debian gcc-aarch64-linux-gnu), otherwise it is skipped
with a notice (or fails with --require-all-platforms).

The binary is a release build of `kvbridge` without the dev vault (`--no-default-features`),
statically linked against glibc (`-C target-feature=+crt-static`): host names resolve through
/etc/hosts and DNS (glibc >= 2.34 has those resolvers built in, no NSS modules to load).
Not musl: the project's build machines have only the x86_64-unknown-linux-gnu Rust target (and
cannot download another); a static glibc build needs nothing more.
`--dev` builds the `-dev` variant with the dev vault. The cargo target directory lives outside
the repository ($KVBRIDGE_IMAGE_CACHE, default ~/.cache/kvbridge-image/target) so rebuilds are
incremental across clones.

Usage:
  deploy/image/build.py [--dev] [--tag TAG] [--layout DIR] [--platform linux/amd64 ...]
                        [--binary amd64=PATH] [--require-all-platforms]
Prints a summary and, last, `layout=DIR tag=TAG digest=sha256:...` (the image index digest).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ROOTFS_FILES = Path(__file__).resolve().parent / "rootfs"

# platform -> (Rust target, ELF e_machine, cross linker or None)
PLATFORMS = {
    "linux/amd64": ("x86_64-unknown-linux-gnu", 0x3E, None),
    "linux/arm64": ("aarch64-unknown-linux-gnu", 0xB7, "aarch64-linux-gnu-gcc"),
}
NONROOT = 65532
ENTRYPOINT = "/usr/local/bin/kvbridge"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def die(msg: str) -> None:
    log(f"build.py: {msg}")
    sys.exit(1)


def canonical(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def workspace_version() -> str:
    with open(REPO / "Cargo.toml", "rb") as f:
        return tomllib.load(f)["workspace"]["package"]["version"]


def cache_dir() -> Path:
    base = os.environ.get("KVBRIDGE_IMAGE_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "kvbridge-image"


# ---------------------------------------------------------------------------------------------
# The binary


def target_installed(target: str) -> bool:
    sysroot = subprocess.run(
        ["rustc", "--print", "sysroot"], check=True, capture_output=True, text=True
    ).stdout.strip()
    return (Path(sysroot) / "lib" / "rustlib" / target / "lib").is_dir()


def cargo_build(target: str, linker: str | None, dev: bool, target_dir: Path) -> Path:
    env = dict(os.environ)
    triple = target.upper().replace("-", "_")
    # Only the target's crates are static; build scripts and proc macros stay host-dynamic.
    env[f"CARGO_TARGET_{triple}_RUSTFLAGS"] = "-C target-feature=+crt-static"
    if linker:
        env[f"CARGO_TARGET_{triple}_LINKER"] = linker
    env["CARGO_TARGET_DIR"] = str(target_dir)
    env.setdefault("CARGO_INCREMENTAL", "0")
    env["CARGO_PROFILE_RELEASE_STRIP"] = "symbols"
    cmd = ["cargo", "build", "--release", "--locked", "-p", "kvbridge", "--target", target]
    if not dev:
        cmd.append("--no-default-features")
    log("+ " + " ".join(cmd))
    start = time.monotonic()
    subprocess.run(cmd, check=True, cwd=REPO, env=env)
    log(f"cargo build ({target}) took {time.monotonic() - start:.0f}s")
    return target_dir / target / "release" / "kvbridge"


def check_static(path: Path, machine: int) -> None:
    """A static executable of the right architecture: ELF64 with no PT_INTERP."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
            die(f"{path} is not a little-endian ELF64 file")
        (e_machine,) = struct.unpack_from("<H", head, 0x12)
        if e_machine != machine:
            die(f"{path} is for ELF machine {e_machine:#x}, expected {machine:#x}")
        (phoff,) = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader the image does not have
            die(f"{path} is dynamically linked (it has an ELF interpreter)")


# ---------------------------------------------------------------------------------------------
# SBOM (SPDX 2.3 JSON): the crates linked into the binary, and the CA bundle's Debian package


def spdx_license(expr: str) -> str:
    expr = expr.strip()
    if not expr:
        return "NOASSERTION"
    return expr.replace("/", " OR ")


def lock_checksums() -> dict[tuple[str, str], str]:
    with open(REPO / "Cargo.lock", "rb") as f:
        lock = tomllib.load(f)
    return {
        (p["name"], p["version"]): p["checksum"]
        for p in lock.get("package", [])
        if "checksum" in p
    }


def sbom(target: str, dev: bool, binary: Path, version: str, created: str) -> bytes:
    cmd = [
        "cargo", "tree", "--locked", "-p", "kvbridge", "--target", target, "-e", "normal",
        "--prefix", "none", "--format", "{p}\t{l}",
    ]
    if not dev:
        cmd.append("--no-default-features")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO).stdout
    crates: dict[tuple[str, str], str] = {}
    for line in out.splitlines():
        pkg, _, lic = line.partition("\t")
        parts = pkg.split()
        if len(parts) < 2 or not parts[1].startswith("v"):
            continue
        crates[(parts[0], parts[1][1:])] = lic.replace(" (*)", "").strip()
    sums = lock_checksums()
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()
    packages = [
        {
            "SPDXID": "SPDXRef-Package-kvbridge",
            "name": "kvbridge",
            "versionInfo": version,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "Apache-2.0",
            "checksums": [{"algorithm": "SHA256", "checksumValue": digest}],
            "primaryPackagePurpose": "APPLICATION",
        }
    ]
    rels = [
        {
            "spdxElementId": "SPDXRef-DOCUMENT",
            "relationshipType": "DESCRIBES",
            "relatedSpdxElement": "SPDXRef-Package-kvbridge",
        }
    ]
    for i, ((name, ver), lic) in enumerate(sorted(crates.items())):
        if name == "kvbridge":
            continue
        pkg = {
            "SPDXID": f"SPDXRef-Crate-{i}",
            "name": name,
            "versionInfo": ver,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": spdx_license(lic),
            "primaryPackagePurpose": "LIBRARY",
        }
        if (name, ver) in sums:
            pkg["downloadLocation"] = f"https://crates.io/api/v1/crates/{name}/{ver}/download"
            pkg["checksums"] = [{"algorithm": "SHA256", "checksumValue": sums[(name, ver)]}]
            pkg["externalRefs"] = [
                {
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": f"pkg:cargo/{name}@{ver}",
                }
            ]
        packages.append(pkg)
        rels.append(
            {
                "spdxElementId": "SPDXRef-Package-kvbridge",
                "relationshipType": "STATIC_LINK",
                "relatedSpdxElement": pkg["SPDXID"],
            }
        )
    ca_version = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Version}", "ca-certificates"],
        capture_output=True, text=True,
    ).stdout.strip()
    if ca_version:
        packages.append(
            {
                "SPDXID": "SPDXRef-Deb-ca-certificates",
                "name": "ca-certificates",
                "versionInfo": ca_version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": "NOASSERTION",
                "externalRefs": [
                    {
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": f"pkg:deb/debian/ca-certificates@{ca_version}?arch=all",
                    }
                ],
            }
        )
        rels.append(
            {
                "spdxElementId": "SPDXRef-DOCUMENT",
                "relationshipType": "DESCRIBES",
                "relatedSpdxElement": "SPDXRef-Deb-ca-certificates",
            }
        )
    doc = {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"kvbridge-{version}-{target}",
        "documentNamespace": f"https://spdx.org/spdxdocs/kvbridge-{version}-{target}-{digest}",
        "creationInfo": {"created": created, "creators": ["Tool: kvbridge deploy/image/build.py"]},
        "packages": packages,
        "relationships": rels,
    }
    return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"


# ---------------------------------------------------------------------------------------------
# The layer


def layer(binary: bytes, sbom_json: bytes, ca: bytes, epoch: int) -> tuple[bytes, bytes]:
    """(uncompressed tar, gzip) of the image's one layer, byte-for-byte reproducible."""
    entries: list[tuple[str, int, int, bytes | None]] = [  # path, mode, uid, file bytes
        ("etc", 0o755, 0, None),
        ("etc/group", 0o644, 0, (ROOTFS_FILES / "etc/group").read_bytes()),
        ("etc/nsswitch.conf", 0o644, 0, (ROOTFS_FILES / "etc/nsswitch.conf").read_bytes()),
        ("etc/passwd", 0o644, 0, (ROOTFS_FILES / "etc/passwd").read_bytes()),
        ("etc/ssl", 0o755, 0, None),
        ("etc/ssl/certs", 0o755, 0, None),
        ("etc/ssl/certs/ca-certificates.crt", 0o644, 0, ca),
        ("home", 0o755, 0, None),
        ("home/nonroot", 0o700, NONROOT, None),
        ("tmp", 0o1777, 0, None),
        ("usr", 0o755, 0, None),
        ("usr/local", 0o755, 0, None),
        ("usr/local/bin", 0o755, 0, None),
        ("usr/local/bin/kvbridge", 0o755, 0, binary),
        ("usr/share", 0o755, 0, None),
        ("usr/share/doc", 0o755, 0, None),
        ("usr/share/doc/kvbridge", 0o755, 0, None),
        ("usr/share/doc/kvbridge/sbom.spdx.json", 0o644, 0, sbom_json),
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for path, mode, uid, data in sorted(entries):
            info = tarfile.TarInfo(path)
            info.mode = mode
            info.uid = info.gid = uid
            info.uname = info.gname = ""
            info.mtime = epoch
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9, mtime=0) as z:
        z.write(tar_bytes)
    return tar_bytes, gz.getvalue()


# ---------------------------------------------------------------------------------------------
# The OCI layout


class Layout:
    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        index_path = root / "index.json"
        self.index = (
            json.loads(index_path.read_text())
            if index_path.exists()
            else {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": []}
        )

    def put(self, data: bytes) -> str:
        digest = sha256(data)
        path = self.blobs / digest.split(":", 1)[1]
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.rename(path)
        return digest

    def tag(self, ref: str, descriptor: dict) -> None:
        keep = [
            m
            for m in self.index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != ref
        ]
        keep.append(descriptor)
        self.index["manifests"] = sorted(
            keep, key=lambda m: m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        )
        tmp = self.root / "index.json.tmp"
        tmp.write_text(json.dumps(self.index, indent=1, sort_keys=True))
        tmp.rename(self.root / "index.json")
        self.gc()

    def gc(self) -> None:
        """Drops blobs no tag reaches (older builds of the same tag)."""
        live: set[str] = set()

        def walk(digest: str) -> None:
            # Only image indexes and manifests are followed; configs and layers are leaves.
            if digest in live:
                return
            live.add(digest)
            path = self.blobs / digest.split(":", 1)[1]
            try:
                doc = json.loads(path.read_bytes())
            except (OSError, ValueError):
                return
            if not isinstance(doc, dict):
                return
            if doc.get("mediaType") == MT_INDEX:
                for child in doc.get("manifests", []):
                    walk(child["digest"])
            elif doc.get("mediaType") == MT_MANIFEST:
                live.add(doc["config"]["digest"])
                for child in doc.get("layers", []):
                    live.add(child["digest"])

        for m in self.index["manifests"]:
            walk(m["digest"])
        for blob in self.blobs.iterdir():
            if "sha256:" + blob.name not in live:
                blob.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dev", action="store_true", help="with the dev vault (tag suffix -dev)")
    ap.add_argument("--tag", help="tag in the layout (default: the workspace version, +'-dev')")
    ap.add_argument("--layout", type=Path, help="OCI layout directory (default: CACHE/oci)")
    ap.add_argument("--platform", action="append", choices=sorted(PLATFORMS),
                    help="platform to build (repeatable; default: all declared)")
    ap.add_argument("--binary", action="append", default=[], metavar="ARCH=PATH",
                    help="use this prebuilt static binary for ARCH (amd64, arm64)")
    ap.add_argument("--require-all-platforms", action="store_true",
                    help="fail when a declared platform cannot be built here")
    args = ap.parse_args()

    total_start = time.monotonic()
    cache = cache_dir()
    layout_dir = args.layout or cache / "oci"
    version = workspace_version()
    image_version = version + ("-dev" if args.dev else "")
    tag = args.tag or image_version
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct") or 0)
    created = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    revision = git("rev-parse", "HEAD")
    prebuilt = {}
    for spec in args.binary:
        arch, _, path = spec.partition("=")
        prebuilt[f"linux/{arch}"] = Path(path)
    if not CA_BUNDLE.is_file():
        die(f"{CA_BUNDLE} is missing: apt-get install ca-certificates")
    ca = CA_BUNDLE.read_bytes()

    annotations = {
        "org.opencontainers.image.title": "kvbridge",
        "org.opencontainers.image.description": (
            "Azure Key Vault secrets, keys and certificates for Kubernetes workloads"
            + (" (with the dev vault)" if args.dev else "")
        ),
        "org.opencontainers.image.version": image_version,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.licenses": "Apache-2.0",
    }
    if revision:
        annotations["org.opencontainers.image.revision"] = revision
    source = os.environ.get("KVBRIDGE_IMAGE_SOURCE", "")
    if source:
        annotations["org.opencontainers.image.source"] = source

    layout = Layout(layout_dir)
    platforms = args.platform or list(PLATFORMS)
    descriptors = []
    sbom_dir = cache / "sbom"
    sbom_dir.mkdir(parents=True, exist_ok=True)
    for platform in platforms:
        target, machine, linker = PLATFORMS[platform]
        os_name, arch = platform.split("/")
        if platform in prebuilt:
            binary = prebuilt[platform]
        else:
            missing = []
            if not target_installed(target):
                missing.append(f"the Rust target {target} (rustup target add {target})")
            if linker and not shutil.which(linker):
                missing.append(f"the linker {linker} (apt-get install gcc-aarch64-linux-gnu)")
            if missing:
                msg = f"{platform}: declared but not built here: needs " + " and ".join(missing)
                if args.require_all_platforms:
                    die(msg)
                log(msg)
                continue
            binary = cargo_build(target, linker, args.dev, cache / "target")
        check_static(binary, machine)
        binary_bytes = binary.read_bytes()
        sbom_json = sbom(target, args.dev, binary, image_version, created)
        (sbom_dir / f"kvbridge-{tag}-{arch}.spdx.json").write_bytes(sbom_json)
        tar_bytes, gz_bytes = layer(binary_bytes, sbom_json, ca, epoch)
        layer_digest = layout.put(gz_bytes)
        config = {
            "created": created,
            "architecture": arch,
            "os": os_name,
            "config": {
                "User": f"{NONROOT}:{NONROOT}",
                "Entrypoint": [ENTRYPOINT],
                "Env": ["PATH=/usr/local/bin"],
                "WorkingDir": "/",
                "Labels": annotations,
            },
            "rootfs": {"type": "layers", "diff_ids": [sha256(tar_bytes)]},
            "history": [{"created": created, "created_by": "deploy/image/build.py"}],
        }
        if arch == "arm64":
            config["variant"] = "v8"
        config_bytes = canonical(config)
        config_digest = layout.put(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": [{"mediaType": MT_LAYER, "digest": layer_digest, "size": len(gz_bytes)}],
            "annotations": annotations,
        }
        manifest_bytes = canonical(manifest)
        platform_desc = {"architecture": arch, "os": os_name}
        if arch == "arm64":
            platform_desc["variant"] = "v8"
        descriptors.append(
            {
                "mediaType": MT_MANIFEST,
                "digest": layout.put(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": platform_desc,
            }
        )
        log(
            f"{platform}: binary {len(binary_bytes) / 2**20:.1f} MiB, layer "
            f"{len(tar_bytes) / 2**20:.1f} MiB uncompressed, {len(gz_bytes) / 2**20:.2f} MiB "
            f"compressed ({len(gz_bytes)} bytes), manifest {descriptors[-1]['digest']}"
        )
    if not descriptors:
        die("no platform could be built")
    index = {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": descriptors, "annotations": annotations}
    index_bytes = canonical(index)
    index_digest = layout.put(index_bytes)
    layout.tag(
        tag,
        {
            "mediaType": MT_INDEX,
            "digest": index_digest,
            "size": len(index_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        },
    )
    log(f"image built in {time.monotonic() - total_start:.0f}s")
    print(f"layout={layout_dir} tag={tag} digest={index_digest}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Build a single-layer container image as a docker-archive tarball, with no
registry and no container engine: only Python's tarfile.

The result imports with
    ctr --address SOCK -n k8s.io images import FILE
(tests/cluster/import-image.sh does that for the test cluster).

The output is deterministic: fixed mtimes, owners and ordering, so the same
inputs give byte-identical tarballs and the same image digest, and importing
again is a no-op.

Examples
  # busybox with every applet linked, default command sh
  mkimage.py --busybox --tag localhost/busybox:1.36 --cmd sh --out busybox.tar

  # the operator: one static binary
  mkimage.py --tag localhost/ephemera:dev --out ephemera.tar \\
      --file target/x86_64-unknown-linux-musl/release/ephemera:/ephemera \\
      --entrypoint '["/ephemera"]' --user 65532:65532
"""

import argparse
import hashlib
import io
import json
import os
import platform
import shlex
import stat
import subprocess
import sys
import tarfile

EPOCH = 0  # mtime of every entry
CREATED = "1970-01-01T00:00:00Z"
DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def arch():
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
            "s390x": "s390x", "riscv64": "riscv64"}.get(m, m)


def is_dynamic_elf(path):
    """True if path is an ELF executable with a PT_INTERP (dynamic loader)."""
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        is64 = head[4] == 2
        little = head[5] == 1
        end = "<" if little else ">"
        import struct
        if is64:
            phoff, = struct.unpack(end + "Q", head[32:40])
            phentsize, phnum = struct.unpack(end + "HH", head[54:58])
        else:
            phoff, = struct.unpack(end + "I", head[28:32])
            phentsize, phnum = struct.unpack(end + "HH", head[42:46])
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            p_type, = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return True
    return False


class Rootfs:
    """Entries of the image's only layer, keyed by path without leading slash."""

    def __init__(self):
        self.entries = {}  # path -> (kind, mode, data_or_target)

    @staticmethod
    def norm(path):
        p = os.path.normpath("/" + path).lstrip("/")
        if not p or p == ".":
            raise SystemExit(f"mkimage: invalid path in image: {path!r}")
        return p

    def _parents(self, p):
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.entries[d] = ("dir", 0o755, None)
            elif self.entries[d][0] != "dir":
                raise SystemExit(f"mkimage: /{d} is not a directory but has entries below it")

    def dir(self, path, mode=0o755):
        p = self.norm(path)
        self._parents(p)
        self.entries[p] = ("dir", mode, None)

    def file(self, path, data, mode=0o644):
        p = self.norm(path)
        self._parents(p)
        self.entries[p] = ("file", mode, data)

    def symlink(self, path, target):
        p = self.norm(path)
        self._parents(p)
        self.entries[p] = ("symlink", 0o777, target)

    def layer_tar(self):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for p in sorted(self.entries):
                kind, mode, data = self.entries[p]
                ti = tarfile.TarInfo(p)
                ti.mtime = EPOCH
                ti.uid = ti.gid = 0
                ti.uname = ti.gname = ""
                ti.mode = mode
                if kind == "dir":
                    ti.type = tarfile.DIRTYPE
                    tar.addfile(ti)
                elif kind == "symlink":
                    ti.type = tarfile.SYMTYPE
                    ti.linkname = data
                    tar.addfile(ti)
                else:
                    ti.type = tarfile.REGTYPE
                    ti.size = len(data)
                    tar.addfile(ti, io.BytesIO(data))
        return buf.getvalue()


def add_busybox(fs, busybox):
    if not os.path.exists(busybox):
        raise SystemExit(f"mkimage: {busybox} not found (apt-get install busybox-static)")
    if is_dynamic_elf(busybox):
        raise SystemExit(f"mkimage: {busybox} is dynamically linked; install busybox-static")
    for d, mode in (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755), ("usr/sbin", 0o755),
                    ("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("etc", 0o755),
                    ("tmp", 0o1777), ("var/tmp", 0o1777), ("root", 0o700), ("home", 0o755),
                    ("run", 0o755)):
        fs.dir(d, mode)
    with open(busybox, "rb") as f:
        fs.file("bin/busybox", f.read(), 0o755)
    applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True,
                             text=True).stdout.split()
    for a in sorted(set(applets)):
        if fs.norm(a) != "bin/busybox":
            fs.symlink(a, "/bin/busybox")
    fs.file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                          b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
    fs.file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return len(applets)


def parse_argv(value, what):
    """A command as a JSON array, or as shell words."""
    if value is None:
        return None
    v = value.strip()
    if v.startswith("["):
        try:
            out = json.loads(v)
        except json.JSONDecodeError as e:
            raise SystemExit(f"mkimage: --{what} is not a valid JSON array: {e}")
        if not all(isinstance(x, str) for x in out):
            raise SystemExit(f"mkimage: --{what} must be an array of strings")
        return out
    return shlex.split(v)


def build(args):
    fs = Rootfs()
    notes = []
    if args.busybox:
        n = add_busybox(fs, args.busybox_path)
        notes.append(f"busybox with {n} applets")
    for spec in args.dir or []:
        path, _, mode = spec.partition(":")
        fs.dir(path, int(mode, 8) if mode else 0o755)
    for spec in args.file or []:
        src, sep, rest = spec.partition(":")
        if not sep:
            raise SystemExit(f"mkimage: --file wants SRC:DST[:MODE], got {spec!r}")
        dst, _, mode = rest.partition(":")
        if not os.path.isfile(src):
            raise SystemExit(f"mkimage: --file source {src} is not a file")
        st = os.stat(src)
        if st.st_mode & 0o111 and is_dynamic_elf(src):
            print(f"mkimage: warning: {src} is dynamically linked; it will not run in an "
                  f"image without its loader and libraries", file=sys.stderr)
        with open(src, "rb") as f:
            fs.file(dst, f.read(), int(mode, 8) if mode else stat.S_IMODE(st.st_mode))
    for spec in args.symlink or []:
        link, sep, target = spec.partition(":")
        if not sep:
            raise SystemExit(f"mkimage: --symlink wants LINK:TARGET, got {spec!r}")
        fs.symlink(link, target)
    if not fs.entries:
        raise SystemExit("mkimage: the image would be empty; give --busybox and/or --file")

    layer = fs.layer_tar()
    diff_id = hashlib.sha256(layer).hexdigest()

    cfg = {"Env": [DEFAULT_PATH] + (args.env or []), "WorkingDir": args.workdir}
    entrypoint = parse_argv(args.entrypoint, "entrypoint")
    cmd = parse_argv(args.cmd, "cmd")
    if entrypoint is not None:
        cfg["Entrypoint"] = entrypoint
    if cmd is not None:
        cfg["Cmd"] = cmd
    if args.user:
        cfg["User"] = args.user
    if args.label:
        cfg["Labels"] = dict(l.partition("=")[::2] for l in args.label)
    config = {
        "architecture": arch(),
        "os": "linux",
        "created": CREATED,
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created": CREATED, "created_by": "tests/cluster/hack/mkimage.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_id = hashlib.sha256(config_bytes).hexdigest()

    manifest = [{"Config": f"{config_id}.json", "RepoTags": args.tag,
                 "Layers": [f"{diff_id}/layer.tar"]}]
    members = [
        (f"{diff_id}", None),
        (f"{diff_id}/layer.tar", layer),
        (f"{config_id}.json", config_bytes),
        ("manifest.json", json.dumps(manifest, separators=(",", ":")).encode()),
    ]
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = EPOCH
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = ""
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tar.addfile(ti)
            else:
                ti.mode = 0o644
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"mkimage: wrote {args.out}: {', '.join(args.tag)} (image id sha256:{config_id[:12]}, "
          f"{len(fs.entries)} entries{'; ' + '; '.join(notes) if notes else ''})", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", action="append", required=True,
                   help="image reference, e.g. localhost/busybox:1.36 (repeatable)")
    p.add_argument("--out", required=True, help="output docker-archive tarball")
    p.add_argument("--busybox", action="store_true",
                   help="add a static busybox as /bin/busybox, links for all its applets, "
                        "base directories and /etc/passwd, /etc/group")
    p.add_argument("--busybox-path", default="/bin/busybox", help="busybox binary to use (default /bin/busybox)")
    p.add_argument("--file", action="append", metavar="SRC:DST[:MODE]",
                   help="copy a host file into the image (octal MODE; default: the source's)")
    p.add_argument("--dir", action="append", metavar="DST[:MODE]", help="create a directory")
    p.add_argument("--symlink", action="append", metavar="LINK:TARGET", help="create a symlink")
    p.add_argument("--entrypoint", help="JSON array or shell words")
    p.add_argument("--cmd", help="JSON array or shell words")
    p.add_argument("--env", action="append", metavar="K=V", help="extra environment (PATH is preset)")
    p.add_argument("--user", help="USER[:GROUP], numeric recommended (needed for runAsNonRoot)")
    p.add_argument("--workdir", default="/", help="working directory (default /)")
    p.add_argument("--label", action="append", metavar="K=V", help="image label")
    args = p.parse_args()
    for t in args.tag:
        if "/" not in t.split(":")[0] or ":" not in t.rsplit("/", 1)[-1]:
            p.error(f"--tag {t!r}: use a full reference like localhost/NAME:TAG "
                    f"(Kubernetes would otherwise look for docker.io/library/NAME)")
    build(args)


if __name__ == "__main__":
    main()

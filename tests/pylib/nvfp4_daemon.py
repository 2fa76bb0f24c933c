"""nvfp4d as a child process for the Python test suites (tests/python, tests/integration).

Starts nvfp4d on free ports (`--listen 127.0.0.1:0`, and `--metrics-listen 127.0.0.1:0` unless
metrics=False), waits until it serves, and reads the ports it printed. Its output goes to a log
file (never a pipe nobody drains, which could block the server).
"""
import os
import pathlib
import re
import signal
import subprocess
import tempfile
import time
import urllib.request


class Daemon:
    def __init__(self, nvfp4d, *args, metrics=True, log=None):
        if log is None:
            fd, log = tempfile.mkstemp(prefix="nvfp4d-", suffix=".log")
            os.close(fd)
        self.log = pathlib.Path(log)
        cmd = [str(nvfp4d), "--listen", "127.0.0.1:0",
               "--metrics-listen", "127.0.0.1:0" if metrics else "", *map(str, args)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        text = ""
        while time.time() < deadline and self.proc.poll() is None:
            text = self.log.read_text()
            if "nvfp4d: serving" in text:
                break
            time.sleep(0.02)
        assert "nvfp4d: serving" in text, f"nvfp4d did not start: {cmd}\n{self.output()}"
        ports = [int(p) for p in re.findall(r"\(port (\d+)\)", text)]
        self.port = ports[0]
        self.metrics_port = ports[1] if metrics else None
        self.target = f"127.0.0.1:{self.port}"

    def output(self):
        """Everything nvfp4d printed so far."""
        return self.log.read_text()

    def rss_bytes(self):
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def metrics(self):
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

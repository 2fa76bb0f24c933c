"""Build hook of the nvfp4client package: generates nvfp4client/_proto/quantizer_pb2.py (the
nvfp4.v1 message classes) from the repository's proto/ while the package is built, so the
package never carries a stale copy of the API. Only the messages are generated; the client
binds the RPC methods by name (nvfp4client/_client.py).

Build from a checkout: `pip install ./client/python` (not `-e`: an editable install has no
build step to generate the classes)."""
import pathlib
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent
PROTO_ROOT = HERE.parent.parent / "proto"
PROTO = "nvfp4/v1/quantizer.proto"


class BuildPyWithMessages(build_py):
    def run(self):
        super().run()
        from grpc_tools import protoc

        source = PROTO_ROOT / PROTO
        if not source.is_file():
            raise RuntimeError(f"{source} not found: build nvfp4client from a repository checkout")
        out = pathlib.Path(self.build_lib) / "nvfp4client" / "_proto"
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            # Compiled under its repository name, so the descriptor registered at import is the
            # same file any other stub of this proto registers (no descriptor-pool clash).
            rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"--python_out={tmp}", str(source)])
            if rc != 0:
                raise RuntimeError(f"protoc failed on {source} (exit {rc})")
            shutil.copyfile(pathlib.Path(tmp) / "nvfp4" / "v1" / "quantizer_pb2.py",
                            out / "quantizer_pb2.py")
        (out / "__init__.py").write_text('"""Generated from proto/nvfp4/v1/quantizer.proto."""\n')


setup(cmdclass={"build_py": BuildPyWithMessages})

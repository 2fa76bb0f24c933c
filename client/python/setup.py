"""Build hook of the nvfp4client package: generates nvfp4client/_proto/quantizer_pb2.py (the
nvfp4.v1 message classes) from the repository's proto/ while the package is built, so the
package never carries a stale copy of the API. Only the messages are generated; the client
binds the RPC methods by name (nvfp4client/_client.py).

Build from a checkout: `pip install ./client/python` (not `-e`: an editable install has no
build step to generate the classes). An sdist carries a copy of the proto, so `python -m
build client/python` (sdist, then the wheel from it) works too."""
import pathlib
import shutil
import tempfile

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = pathlib.Path(__file__).resolve().parent
PROTO = "nvfp4/v1/quantizer.proto"
# The repository's proto/, or the copy an sdist carries (BuildSdistWithProto).
PROTO_ROOTS = (HERE / "proto", HERE.parent.parent / "proto")


def proto_root() -> pathlib.Path:
    for root in PROTO_ROOTS:
        if (root / PROTO).is_file():
            return root
    raise RuntimeError(f"{PROTO} not found in {', '.join(map(str, PROTO_ROOTS))}: build "
                       "nvfp4client from a repository checkout or from its sdist")


class BuildPyWithMessages(build_py):
    def run(self):
        # An in-tree build reuses build/lib: drop what an earlier build left there, so that a
        # module deleted from the sources is not installed again.
        shutil.rmtree(pathlib.Path(self.build_lib) / "nvfp4client", ignore_errors=True)
        super().run()
        from grpc_tools import protoc

        root = proto_root()
        source = root / PROTO
        out = pathlib.Path(self.build_lib) / "nvfp4client" / "_proto"
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            # Compiled under its repository name, so the descriptor registered at import is the
            # same file any other stub of this proto registers (no descriptor-pool clash).
            rc = protoc.main(["protoc", f"-I{root}", f"--python_out={tmp}", str(source)])
            if rc != 0:
                raise RuntimeError(f"protoc failed on {source} (exit {rc})")
            shutil.copyfile(pathlib.Path(tmp) / "nvfp4" / "v1" / "quantizer_pb2.py",
                            out / "quantizer_pb2.py")
        (out / "__init__.py").write_text('"""Generated from proto/nvfp4/v1/quantizer.proto."""\n')


class BuildSdistWithProto(sdist):
    """An sdist carries the proto (under proto/), so a wheel builds from it alone."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        target = pathlib.Path(base_dir) / "proto" / PROTO
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(proto_root() / PROTO, target)


setup(cmdclass={"build_py": BuildPyWithMessages, "sdist": BuildSdistWithProto})

"""Only what pyproject.toml cannot say: the wheel carries the repository's configs/ as cilearn/configs/.

configs/ stays at the top of the repository (the README's ``configs/...`` paths, the other branches' edits);
building a wheel copies its YAML files into the package, where :mod:`cilearn.shipped` finds them
(``cilearn run quickstart``, ``cilearn configs``).  MANIFEST.in puts configs/ into the sdist, so that a wheel
built from the sdist has them too.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithConfigs(build_py):
    def run(self):
        super().run()
        source = Path(__file__).resolve().parent / "configs"
        if not self.editable_mode:  # an editable install reads configs/ where it is
            for path in sorted(source.rglob("*.yaml")):
                target = Path(self.build_lib, "cilearn", "configs", path.relative_to(source))
                self.mkpath(str(target.parent))
                self.copy_file(str(path), str(target), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        source = Path(__file__).resolve().parent / "configs"
        extra = [str(Path(self.build_lib, "cilearn", "configs", p.relative_to(source))) for p in source.rglob("*.yaml")]
        return super().get_outputs(include_bytecode) + ([] if self.editable_mode else extra)


setup(cmdclass={"build_py": BuildWithConfigs})

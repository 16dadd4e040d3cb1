"""Where an offline command writes its model: checked first, written whole or not at all."""

from __future__ import annotations

from pathlib import Path


def check_output_dir(path: str | Path, overwrite: bool) -> Path:
    """``path`` if a command may write a model there: absent, empty, or (with
    ``overwrite``) an earlier model directory (one with a config.json)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"output {path} is a file; name a directory")
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise ValueError(f"output directory {path} already exists; pass --overwrite or choose another")
        if not (path / "config.json").is_file():
            raise ValueError(f"{path} is not empty and not a model directory; --overwrite only replaces models")
    return path


class staged_output:
    """``with staged_output(path) as tmp:`` write into ``tmp``; on success it becomes
    ``path`` (replacing an old one), on an error it is removed: never half a model."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __enter__(self) -> Path:
        import tempfile

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{self.path.name}-", dir=self.path.parent))
        self.tmp.chmod(0o755)    # mkdtemp makes it private; a model directory is not
        return self.tmp

    def __exit__(self, kind, value, traceback) -> None:
        import shutil

        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.path.exists():
            old = self.path.with_name(f".old-{self.path.name}-{self.tmp.name.rsplit('-', 1)[-1]}")
            self.path.rename(old)
        self.tmp.rename(self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

"""torchvision's ImageFolder, hardened for folders a user names (the ``imagefolder`` dataset): the walk follows
symbolic links to folders but never into a folder it has already walked (two ``x -> .`` links made torchvision's
walk run for minutes, then fail with MemoryError) and skips anything that is not a regular file (a FIFO named
``x.jpg`` would block the read); an image is checked before it is decoded (at most :data:`MAX_IMAGE_PIXELS`; a
decompression bomb or a broken file is one line naming it); and with ``first_size`` set (no ``image_size``), an
image of another size is one line naming it and the option to set, not ``stack expects each tensor to be equal
size``."""
from __future__ import annotations

import os
import stat
import warnings
from typing import Any, Callable

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import has_file_allowed_extension

from embedlab.errors import EmbedlabError

MAX_IMAGE_PIXELS = 1 << 26  # an image file larger than 67 Mpixel (8192²) is refused before it is decoded


class SafeImageFolder(ImageFolder):
    def __init__(self, root: str, transform: Callable | None = None,
                 first_size: tuple[int, int] | None = None, allow_empty: bool = False) -> None:
        self.first_size = first_size
        super().__init__(root, transform=transform, loader=self._load, allow_empty=allow_empty)

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
        instances, seen = [], set()
        for name in sorted(class_to_idx):
            stack = [os.path.join(directory, name)]
            while stack:
                folder = stack.pop()
                try:
                    st = os.stat(folder)
                    if (st.st_dev, st.st_ino) in seen:  # a link back into a folder already walked
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    with os.scandir(folder) as it:
                        entries = sorted(it, key=lambda e: e.name)
                except OSError:  # a dangling link, a loop of links, no permission: nothing to read there
                    continue
                subdirs = []
                for e in entries:
                    try:
                        mode = e.stat().st_mode
                    except OSError:
                        continue
                    if stat.S_ISDIR(mode):
                        subdirs.append(e.path)
                    elif stat.S_ISREG(mode) and (has_file_allowed_extension(e.name, extensions) if extensions
                                                 else is_valid_file(e.path)):
                        instances.append((e.path, class_to_idx[name]))
                stack.extend(reversed(subdirs))
        found = {c for _, c in instances}
        empty = sorted(n for n, i in class_to_idx.items() if i not in found)
        if empty and not allow_empty:
            msg = f"Found no valid file for the classes {', '.join(empty)}. "
            if extensions is not None:
                msg += f"Supported extensions are: {', '.join(extensions)}"
            raise FileNotFoundError(msg)
        return instances

    @staticmethod
    def _open(path: str) -> Any:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked below
            try:
                img = Image.open(path)
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise EmbedlabError(f"{path}: an image of {img.width}×{img.height} pixels; embedlab reads "
                                        f"images of at most {MAX_IMAGE_PIXELS:,} pixels (resize it first)")
                return img
            except Image.DecompressionBombError as e:
                raise EmbedlabError(f"{path}: {e} (resize it first)") from None
            except (OSError, ValueError, SyntaxError) as e:
                raise EmbedlabError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else e}")\
                    from None

    def size_of(self, i: int) -> tuple[int, int]:
        with self._open(self.samples[i][0]) as img:
            return img.size

    def _load(self, path: str) -> Any:
        from PIL import Image

        with self._open(path) as img:
            if self.first_size is not None and img.size != self.first_size:
                raise EmbedlabError(f"{path}: an image of {img.size[0]}×{img.size[1]} pixels, but the first "
                                    f"training image is {self.first_size[0]}×{self.first_size[1]}; images of "
                                    f"several sizes need --data-opt image_size=N (each resized to N×N)")
            try:
                return img.convert("RGB")
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
                raise EmbedlabError(f"cannot read image {path}: {str(e).splitlines()[0] if str(e) else e}")\
                    from None


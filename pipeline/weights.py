"""Find model weights on disk, or have Ultralytics download a known name; fail with the fix, not a trace."""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.errors import WeightsNotFoundError

LOGGER = logging.getLogger(__name__)


def ultralytics_weights_dir() -> Path:
    """Ultralytics' weights folder (its settings' ``weights_dir``): where downloads go and later runs find them."""
    from ultralytics.utils import SETTINGS

    return Path(SETTINGS["weights_dir"])


#: Where SAM 3's weights come from (gated: Meta's SAM licence); samlabel never downloads them.
SAM3_WEIGHTS_HELP = (
    "SAM 3 weights are gated: accept Meta's SAM licence at https://huggingface.co/facebook/sam3, download sam3.pt "
    "and pass its path: {flag} PATH/sam3.pt"
)


def is_sam3_file(weights: str | Path) -> bool:
    """SAM 3 weights (``sam3.pt``, ``sam3_finetuned.pt`` ...): a file whose name starts with ``sam3``."""
    return Path(weights).name.lower().startswith("sam3")


def sam3_weights(weights: str | Path, *, flag: str) -> Path:
    """The SAM 3 weights file ``weights``, which samlabel never downloads.

    Raises:
        WeightsNotFoundError: not on disk, in one line with where to get it and how to pass it.
    """
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"{flag} {weights}: no such file. {SAM3_WEIGHTS_HELP.format(flag=flag)}")
    return path


def resolve_weights(spec: str | Path, *, flag: str, weights_dir: Path | None = None) -> Path:
    """Return a local path for ``spec``: an existing file, or a name Ultralytics can download (never SAM 3's).

    Args:
        spec: a path, or a bare released-asset name such as ``yolov8n.pt`` or ``mobile_sam.pt``.
        flag: the option that sets it (``--detector`` / ``--segmenter``), named in the error: as that flag in
            the error's ``cli_message``, as the Python argument (``detector=``) in its message.
        weights_dir: where a bare name is looked for and downloaded to; ``None`` for
            :func:`ultralytics_weights_dir`.

    Raises:
        WeightsNotFoundError: not on disk and not downloadable (offline, or not a released name).
    """
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if is_sam3_file(path):  # gated weights: never asked of Ultralytics' downloader
        return sam3_weights(spec, flag=flag)
    if path.parent != Path(".") or not path.suffix:
        raise _not_found(flag, spec, "no such file", "give the path of a weights file with {option}")
    if weights_dir is None:  # a name downloaded before is found without importing Ultralytics (and PyTorch)
        found = _downloaded_before(path.name)
        if found is not None:
            return found
    from ultralytics.utils.downloads import attempt_download_asset

    # Into Ultralytics' weights folder, where later runs find it, rather than the current directory.
    target = Path(weights_dir if weights_dir is not None else ultralytics_weights_dir()) / path.name
    LOGGER.info("%s not found locally; asking Ultralytics to download it to %s", spec, target.parent)
    try:
        downloaded = Path(attempt_download_asset(str(target)))
    except Exception as e:  # noqa: BLE001 - any network/asset failure means the same thing to the user
        raise _not_found(
            flag,
            spec,
            f"not found locally and could not be downloaded ({type(e).__name__}: {e})",
            "download it where you have internet, or give a local file with {option}",
        ) from None
    if not downloaded.is_file():
        raise _not_found(
            flag, spec, "not found locally and the download did not produce it", "give a local file with {option}"
        )
    return downloaded


def _downloaded_before(name: str) -> Path | None:
    """``name`` in Ultralytics' weights folder, read from its settings file without importing Ultralytics; ``None``
    when the file or the settings are not there (Ultralytics then finds, or downloads, it as usual).

    The settings file is where Ultralytics keeps it: ``$YOLO_CONFIG_DIR/Ultralytics``, else the user's config folder
    (``$XDG_CONFIG_HOME`` or ``~/.config`` on Linux, ``~/Library/Application Support`` on macOS, ``AppData/Roaming``
    on Windows), ``settings.json``.
    """
    import json
    import os
    import sys

    if env := os.environ.get("YOLO_CONFIG_DIR"):
        folder = Path(env).expanduser()
    elif sys.platform.startswith("linux"):
        folder = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    elif sys.platform == "darwin":
        folder = Path.home() / "Library" / "Application Support"
    elif sys.platform == "win32":
        folder = Path.home() / "AppData" / "Roaming"
    else:
        return None
    try:
        weights_dir = json.loads((folder / "Ultralytics" / "settings.json").read_text(encoding="utf-8"))["weights_dir"]
        found = Path(weights_dir) / name
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if found.is_file() else None


def _not_found(flag: str, spec, problem: str, fix: str) -> WeightsNotFoundError:
    """The error worded twice: for Python (``detector='x.pt'`` ... ``detector="PATH"``) and for the CLI
    (``--detector x.pt`` ... ``--detector PATH``), which prints ``cli_message``. ``fix`` names the option as ``{option}``.
    """
    argument = flag.lstrip("-").replace("-", "_")
    return WeightsNotFoundError(
        f"{argument}={str(spec)!r}: {problem}; {fix.format(option=f'{argument}=' + repr('PATH'))}",
        cli=f"{flag} {spec}: {problem}; {fix.format(option=f'{flag} PATH')}",
    )

"""The ``--device`` check shared by every command that loads a model (label, convert, review, finetune)."""

from __future__ import annotations

from pipeline.errors import SamlabelError


def check_device(device: str | None) -> None:
    """Fail now, in one line, on a ``--device`` this machine does not have (not mid-run with a trace)."""
    if device in (None, "", "cpu"):
        return
    from ultralytics.utils.torch_utils import select_device

    try:
        select_device(device, verbose=False)
    except Exception as e:  # noqa: BLE001 - Ultralytics raises ValueError, torch may raise others
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SamlabelError(f"--device {device}: not usable here ({first}); use --device cpu or a valid GPU") from None

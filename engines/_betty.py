"""Import Betty, refusing any release other than the one medmlo is built against.

pip on Python >= 3.11 silently resolves ``betty-ml`` to the old 0.1.1 (0.2.x declares
``Requires-Python < 3.11``), whose API differs. Failing here with the install command is
kinder than an AttributeError deep inside a run.
"""

from __future__ import annotations

from importlib import metadata

REQUIRED_BETTY = "0.2.1"
INSTALL_HINT = f"pip install --no-deps --ignore-requires-python betty-ml=={REQUIRED_BETTY}"


def _check_betty() -> None:
    try:
        found = metadata.version("betty-ml")
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"medmlo needs betty-ml {REQUIRED_BETTY}, which is not installed. Install it with:\n"
            f"    {INSTALL_HINT}\n"
            "(--ignore-requires-python is needed because betty-ml 0.2.1 declares Python < 3.11 "
            "although it runs on newer Pythons.)"
        ) from None
    if found != REQUIRED_BETTY:
        raise ImportError(
            f"medmlo needs betty-ml {REQUIRED_BETTY} but found betty-ml {found}. On Python >= 3.11 "
            "a plain `pip install betty-ml` picks the old 0.1.1. Replace it with:\n"
            f"    pip uninstall -y betty-ml && {INSTALL_HINT}"
        )


_check_betty()

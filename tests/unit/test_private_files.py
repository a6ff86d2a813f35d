from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from linkvault.crypto import load_or_create_key_file
from linkvault.errors import ConfigurationError
from linkvault.private_files import read_private_text, write_private_file


def test_concurrent_first_starts_agree_on_one_key_file(tmp_path: Path) -> None:
    for n in range(20):
        path = tmp_path / f"keys-{n}"
        with ThreadPoolExecutor(8) as pool:
            rings = list(pool.map(load_or_create_key_file, [path] * 8))
        assert len({ring.active_id for ring in rings}) == 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_an_existing_file_is_kept_unless_replacing(tmp_path: Path) -> None:
    path = tmp_path / "f"
    assert write_private_file(path, b"first\n", replace=False)
    assert not write_private_file(path, b"second\n", replace=False)
    assert path.read_bytes() == b"first\n"
    assert write_private_file(path, b"third\n", replace=True)
    assert path.read_bytes() == b"third\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x\n")
    os.chmod(path, 0o640)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        read_private_text(path, "API key file", ConfigurationError)

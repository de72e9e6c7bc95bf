"""service/settings.py: where the embedded defaults keep their files."""
from __future__ import annotations

from service.core.signing import KEY_FILE, signing_key
from service.settings import Settings


def test_the_embedded_defaults_keep_the_database_and_the_key_outside_the_data_folder(tmp_path):
    st = Settings(data_dir=tmp_path / "photos")
    db = st.database_url_effective.removeprefix("sqlite:///")
    assert db == str((tmp_path / "photos-state" / "camloop.db").resolve())
    signing_key(st)
    assert (tmp_path / "photos-state" / KEY_FILE).is_file() and not (tmp_path / "photos").exists()
    # An install from before the state folder: its database and key stay where they are.
    old = tmp_path / "old"
    old.mkdir()
    (old / "camloop.db").write_bytes(b"")
    (old / KEY_FILE).write_bytes(b"k" * 64)
    st = Settings(data_dir=old)
    assert st.database_url_effective.endswith(str((old / "camloop.db").resolve()))
    assert signing_key(st) == b"k" * 64
    assert Settings(data_dir=old, state_dir=tmp_path / "elsewhere").state_path == tmp_path / "elsewhere"

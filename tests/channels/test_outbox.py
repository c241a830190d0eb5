"""The outbox sandbox channel: files per message, atomic, idempotent by message id."""

from __future__ import annotations

import json
from email import message_from_bytes
from email import policy as email_policy
from pathlib import Path

from tests.channels.helpers import email, sms
from tidings.channels import get_channel
from tidings.channels.outbox import OutboxChannel, file_stem
from tidings.config import Settings


def test_email_and_sms_become_files(tmp_path: Path) -> None:
    adapter = get_channel("outbox", Settings(outbox_dir=str(tmp_path / "out")))

    results = adapter.send_batch([email(1), sms(2)])

    assert [r.status for r in results] == ["accepted", "accepted"]
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == ["1.eml", "1.json", "2.json"]
    mime = message_from_bytes((folder / "1.eml").read_bytes(), policy=email_policy.default)
    assert mime["To"] == "user1@example.com" and mime["X-Tidings-Message-Id"] == "1"
    sidecar = json.loads((folder / "1.json").read_text())
    assert sidecar["subject"] == "Hello 1" and sidecar["categories"] == [
        "welcome",
        "journey:welcome",
    ]
    text = json.loads((folder / "2.json").read_text())
    assert text["body"] == "Your order 2 has shipped" and text["to"] == "+14155550002"
    assert results[0].raw["files"] == [str(folder / "1.eml"), str(folder / "1.json")]


def test_resending_a_message_overwrites_it(tmp_path: Path) -> None:
    adapter = OutboxChannel(folder=tmp_path)
    adapter.send_batch([email(1)])
    adapter.send_batch([email(1, subject="Second try")])

    assert sorted(p.name for p in tmp_path.iterdir()) == ["1.eml", "1.json"]  # no temp files left
    assert json.loads((tmp_path / "1.json").read_text())["subject"] == "Second try"


def test_ids_cannot_escape_the_folder(tmp_path: Path) -> None:
    assert file_stem("../../etc/passwd") == "_.._etc_passwd"
    OutboxChannel(folder=tmp_path).send_batch([sms(1, message_id="../x")])
    assert [p.name for p in tmp_path.iterdir()] == ["_x.json"]


def test_unwritable_folder_fails_the_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    [result] = OutboxChannel(folder=blocker / "sub").send_batch([sms(1)])

    assert result.status == "failed" and "cannot write" in (result.error or "")

"""``grounded-sam weights list | download | path`` against a local HTTP mirror."""

from __future__ import annotations

import json

import pytest
import test_weights as tw

from grounded_sam.cli import main

VIT_B = tw.VIT_B
cache_files, tiny_state_dict, to_bytes = tw.cache_files, tw.tiny_state_dict, tw.to_bytes
# fixtures shared with test_weights.py
server, home, mirror, tiny_check = tw.server, tw.home, tw.mirror, tw.tiny_check


@pytest.fixture(autouse=True)
def _local_hf_cache(tmp_path, monkeypatch):
    """Hub lookups see an empty Hugging Face cache, never the user's."""
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_list_shows_every_entry_with_cache_state(mirror, home, tiny_check, capsys):
    mirror.files[VIT_B] = to_bytes(tiny_state_dict())
    assert main(["weights", "download", "vit_b"]) == 0
    capsys.readouterr()
    assert main(["weights", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "KIND", "SIZE", "CACHED", "PATH"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert rows["vit_b"][1:] == ["sam", "~375", "MB", "yes", str(home / VIT_B)]
    assert rows["vit_h"][-2:] == ["no", str(home / "sam_vit_h_4b8939.pth")]
    assert rows["FastSAM-s"][1] == "yolo" and rows["FastSAM-s"][-2] == "no"
    assert rows["grounding-dino-tiny"][-1] == "IDEA-Research/grounding-dino-tiny)"

    assert main(["weights", "list", "--kind", "sam", "--json"]) == 0
    records = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in records] == [
        "vit_b",
        "vit_l",
        "vit_h",
        "mobile_sam",
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_small",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
    ]
    assert records[0]["cached"] is True and records[1]["cached"] is False
    assert records[0]["url"] == f"{mirror.url}/{VIT_B}"


def test_download_and_path(mirror, home, tiny_check, capsys):
    body = to_bytes(tiny_state_dict())
    mirror.files[VIT_B] = body
    mirror.files["mobile_sam.pt"] = body
    assert main(["weights", "path", "vit_b"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(home / VIT_B)
    assert "not downloaded yet" in out.err

    assert main(["weights", "download", "vit_b", "mobile_sam", "vit_b"]) == 0
    assert capsys.readouterr().out.split() == [str(home / VIT_B), str(home / "mobile_sam.pt")]
    assert (home / VIT_B).read_bytes() == body
    assert main(["weights", "path", "vit_b"]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(home / VIT_B) and out.err == ""
    assert main(["weights", "download", "vit_b", "--force"]) == 0
    assert mirror.hits[VIT_B] == 2


def test_bad_input_exits_2_with_one_error_line(mirror, home, tiny_check, monkeypatch, capsys):
    assert main(["weights", "download", "vit_b", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown weights 'nope'")
    assert mirror.hits == {}  # validated before anything is downloaded

    assert main(["weights", "download"]) == 2
    assert "at least one NAME" in capsys.readouterr().err
    assert main(["weights", "download", "vit_b", "--all"]) == 2
    assert main(["weights", "path", "grounding-dino-tiny"]) == 2
    assert "not in the local hub cache" in capsys.readouterr().err

    monkeypatch.setenv("GROUNDED_SAM_OFFLINE", "1")
    assert main(["weights", "download", "vit_b"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(home / VIT_B) in err and "offline" in err
    assert cache_files(home) == []

    monkeypatch.delenv("GROUNDED_SAM_OFFLINE")
    mirror.files[VIT_B] = b"garbage"
    assert main(["weights", "download", "vit_b"]) == 2
    assert "not a readable torch checkpoint" in capsys.readouterr().err
    assert cache_files(home) == []


def test_one_failed_download_does_not_stop_the_others(mirror, home, tiny_check, capsys):
    mirror.files["mobile_sam.pt"] = to_bytes(tiny_state_dict())  # vit_b is not on the mirror
    assert main(["weights", "download", "vit_b", "mobile_sam"]) == 2
    out = capsys.readouterr()
    assert out.out.split() == [str(home / "mobile_sam.pt")]
    lines = out.err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: vit_b: ")
    assert lines[1] == "error: 1 of 2 not downloaded: vit_b"
    assert "mobile_sam.pt" in cache_files(home) and not any("vit_b" in f for f in cache_files(home))

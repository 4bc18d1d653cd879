"""``served``: a server that cannot start fails fast with the log named, and no process is left behind."""

import urllib.request

import pytest

from rewardhub_judge.subprocess_server import ServerStartError, served


def test_a_server_that_cannot_load_its_model_is_reported_with_its_log(tmp_path):
    log = tmp_path / "serve.log"
    with pytest.raises(ServerStartError, match=r"serve\.log"), \
            served(str(tmp_path / "no-such-model"), log, start_timeout=120):
        pytest.fail("the block must not run when the server did not start")
    assert "no-such-model" in log.read_text()  # the server's own error is in the log the message names


def test_the_server_is_stopped_when_the_block_raises(tiny_model_path, tmp_path):
    with pytest.raises(KeyError), served(str(tiny_model_path), tmp_path / "serve.log", start_timeout=120) as url:
        assert url.startswith("http://127.0.0.1:")
        urllib.request.urlopen(url + "/models", timeout=5).close()  # up inside the block
        raise KeyError("boom")
    with pytest.raises(OSError):  # gone after it: the port no longer answers
        urllib.request.urlopen(url + "/models", timeout=5).close()

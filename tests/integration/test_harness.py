"""The harness itself: real daemons answer, the storage host pins its key and is SFTP only."""

import paramiko
import pytest

pytestmark = pytest.mark.integration


def test_minions_answer_ping(salt_cli, salt_minion, salt_minion_2):
    ret = salt_cli.run("test.ping", minion_tgt=salt_minion.id)
    assert ret.returncode == 0
    assert ret.data is True


def test_master_serves_sample_tests_not_secrets(salt_cli, salt_minion):
    ret = salt_cli.run("cp.list_master", minion_tgt=salt_minion.id)
    assert ret.returncode == 0
    served = set(ret.data)
    assert any(path.startswith("sample_tests/") for path in served), served
    assert "top.sls" in served
    assert not any(".run" in path or path.startswith(".git") for path in served)


def _client(host, policy=paramiko.RejectPolicy):
    client = paramiko.SSHClient()
    client.load_host_keys(str(host.known_hosts))
    client.set_missing_host_key_policy(policy())
    client.connect("127.0.0.1", port=host.port, username=host.user,
                   key_filename=str(host.client_key), allow_agent=False, look_for_keys=False, timeout=10)
    return client


def test_storage_host_is_sftp_only_with_pinned_key(storage_host):
    client = _client(storage_host)
    try:
        sftp = client.open_sftp()
        assert sftp.stat(storage_host.remote_inbox) is not None
        _, stdout, _ = client.exec_command("id")
        assert b"uid=" not in stdout.read()
    finally:
        client.close()


def test_storage_host_refuses_unknown_host_key(storage_host, tmp_path):
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException):
        client.connect("127.0.0.1", port=storage_host.port, username=storage_host.user,
                       key_filename=str(storage_host.client_key), allow_agent=False,
                       look_for_keys=False, timeout=10)
